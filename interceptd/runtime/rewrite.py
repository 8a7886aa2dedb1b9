"""The pure part of create: the rewrite of a spec, and the path lists it checks against."""

from __future__ import annotations

import os

from . import bpfcache
from . import settings as settingsmod
from . import spec as sp
from .bundle import MARKER


def sensitive_paths(st: settingsmod.Settings) -> list[str]:
    """Never bound into a container (nor a parent of them), nor a container's root:
    the engines' sockets and state, interceptd's state, config and rootfs views."""
    out = [*sp.SENSITIVE_PATHS, st.state_dir, st.mount_root, *st.extra_sensitive_paths]
    if st.config_path:
        out.append(st.config_path)
    return out


def shared_paths(st: settingsmod.Settings) -> list[str]:
    """[runtime] shared_paths as written and as resolved (either may be what a
    bind source resolves under)."""
    return list(dict.fromkeys([*st.shared_paths,
                               *(os.path.realpath(p) for p in st.shared_paths)]))


def rewrite_spec(spec: dict, *, cid: str, host_base: int, st: settingsmod.Settings,
                 bounding: set[str], host_ns: dict, notified: list[str],
                 denied: list[dict], root: str | None = None) -> dict:
    """All pure rewrites, in order, on spec itself (raises spec.Refused)."""
    new = spec
    sp.check_namespaces(new, host_ns)
    sp.check_mounts(new, sensitive_paths(st), st.sensitive_mount_allow,
                    shared=shared_paths(st), root=root,
                    trust_annotations=st.sensitive_mount_trust_annotations)
    sp.ensure_user_namespace(new, host_base, st.range_size)
    sp.fit_sysctls(new, st.range_size)
    sp.clamp_capabilities(new.setdefault("process", {}), bounding)
    sp.apply_masks(new)
    bpfcache.check_annotations(new)
    digest = sp.add_seccomp(new, notified, denied, os.path.join(st.state_dir, "seccomp.sock"),
                            cid)
    ann = new.setdefault("annotations", {})
    ann[bpfcache.DIGEST] = digest
    ann[MARKER] = "rewritten"
    ann["io.interceptd.host-base"] = str(host_base)
    return new


def bind_policy(spec: dict, st: settingsmod.Settings, root: str) -> sp.BindPolicy:
    return sp.bind_policy(spec, shared_paths(st), sensitive_paths(st),
                          st.sensitive_mount_allow, root, st.sensitive_mount_trust_annotations)
