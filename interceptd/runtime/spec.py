"""Pure rewrites of an OCI runtime spec (config.json as a dict).

Each function takes the spec and what it needs from the host, changes the spec in
place, and raises `Refused` with a reason when the container must not start.
None of them weakens the container's own configuration.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable

from .caps import CAP_NUMBERS, normalise


class Refused(Exception):
    """The container is refused; the message says why."""


# ---------------------------------------------------------------- user namespace

def ensure_user_namespace(spec: dict, host_base: int, size: int = 65536) -> None:
    """Every container gets its own user namespace mapping 0..size-1 to host_base...

    Whatever the config asked for (no userns, Docker's --userns=host, a joined userns
    path, other maps) is replaced: the mapping is the shim's to choose.
    """
    linux = spec.setdefault("linux", {})
    nss = [ns for ns in linux.get("namespaces", []) if ns.get("type") != "user"]
    nss.append({"type": "user"})
    linux["namespaces"] = nss
    linux["uidMappings"] = [{"containerID": 0, "hostID": host_base, "size": size}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": host_base, "size": size}]


def fit_sysctls(spec: dict, size: int = 65536) -> None:
    """Sysctls naming ids must stay inside the container's mapping (Docker sets
    ping_group_range to "0 2147483647", which the kernel rejects in a userns)."""
    sysctl = (spec.get("linux") or {}).get("sysctl") or {}
    val = sysctl.get("net.ipv4.ping_group_range")
    if val is None:
        return
    try:
        lo, hi = (int(x) for x in str(val).split())
    except ValueError:
        return  # the runtime reports a malformed value itself
    lo, hi = min(lo, size - 1), min(hi, size - 1)
    sysctl["net.ipv4.ping_group_range"] = f"{lo} {hi}"


# ---------------------------------------------------------------- namespaces

REQUIRED_NAMESPACES = ("pid", "network", "ipc", "uts", "mount")
# Docker on cgroup v1 shares the host's cgroup namespace by default: add one
# instead of refusing (it only adds isolation).
ADDED_NAMESPACES = ("cgroup",)
HOST_FLAG = {"pid": "--pid=host", "network": "--network=host", "ipc": "--ipc=host",
             "uts": "--uts=host", "cgroup": "--cgroupns=host", "mount": "a host mount namespace"}


def check_namespaces(spec: dict, host_ns: dict[str, set[tuple[int, int]]],
                     ns_identity=None) -> None:
    """Refuse host namespaces: a missing pid/net/ipc/uts/mount entry, or a path to a host ns.

    host_ns maps a namespace type to the (st_dev, st_ino) identities of the host's
    namespaces of that type; ns_identity(path) -> (dev, ino) resolves a path.
    """
    linux = spec.setdefault("linux", {})
    nss = linux.setdefault("namespaces", [])
    types = {ns.get("type") for ns in nss}
    for t in REQUIRED_NAMESPACES:
        if t not in types:
            raise Refused(f"container shares the host's {t} namespace ({HOST_FLAG[t]}): "
                          "refused by interceptd")
    for t in ADDED_NAMESPACES:
        if t not in types:
            nss.append({"type": t})
    ident = ns_identity or _ns_identity
    for ns in nss:
        path = ns.get("path")
        t = ns.get("type")
        if not path or t == "user":
            continue
        try:
            who = ident(path)
        except OSError as e:
            raise Refused(f"cannot inspect {t} namespace path {path}: {e}") from None
        if who in host_ns.get(t, set()):
            raise Refused(f"{t} namespace path {path} is the host's ({HOST_FLAG.get(t, t)}): "
                          "refused by interceptd")


def _ns_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


# ---------------------------------------------------------------- capabilities

CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def clamp_capabilities(process: dict, bounding: set[str]) -> list[str]:
    """Drop capabilities the host cannot grant (unknown names too); return what was dropped."""
    caps = process.get("capabilities")
    dropped: set[str] = set()
    if not caps:
        return []
    for key in CAP_SETS:
        if key not in caps or caps[key] is None:
            continue
        kept = []
        for name in caps[key]:
            n = normalise(name)
            if n in CAP_NUMBERS and n in bounding:
                kept.append(name)
            else:
                dropped.add(name)
        caps[key] = kept
    return sorted(dropped)


def clamp_cap_list(names: Iterable[str], bounding: set[str]) -> list[str]:
    return [n for n in names if normalise(n) in bounding and normalise(n) in CAP_NUMBERS]


# ---------------------------------------------------------------- masked paths

DOCKER_MASKED = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]
DOCKER_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def apply_masks(spec: dict) -> None:
    linux = spec.setdefault("linux", {})
    for key, defaults in (("maskedPaths", DOCKER_MASKED), ("readonlyPaths", DOCKER_READONLY)):
        cur = list(linux.get(key) or [])
        for p in defaults:
            if p not in cur:
                cur.append(p)
        linux[key] = cur


# ---------------------------------------------------------------- sensitive mounts

SENSITIVE_PATHS = [
    "/var/run/docker.sock", "/run/docker.sock", "/run/containerd", "/var/run/containerd",
    "/etc/docker", "/var/lib/docker", "/var/lib/containerd", "/run/docker",
    "/var/run/docker", "/etc/interceptd", "/run/crun", "/run/runc",
]
SENSITIVE_NAMES = ("docker.sock", "containerd.sock", "containerd.sock.ttrpc")
# Where an image name or digest shows up in annotations, depending on the caller.
IMAGE_ANNOTATIONS = (
    "org.opencontainers.image.ref.name", "org.opencontainers.image.base.name",
    "org.opencontainers.image.base.digest", "io.kubernetes.cri.image-name",
    "io.containerd.image.name", "com.docker.image.name", "com.docker.image.digest",
)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


_HEX = frozenset("0123456789abcdef")
_DOCKER_CONTAINER_FILES = ("resolv.conf", "hostname", "hosts", "mounts/shm")


def _docker_own(rel: str) -> bool:
    """Per-container files and volumes that Docker itself binds from its data root
    (rel is the normalised path below the data root)."""
    parts = rel.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "containers":
        return (len(parts[1]) == 64 and set(parts[1]) <= _HEX
                and "/".join(parts[2:]) in _DOCKER_CONTAINER_FILES)
    return len(parts) >= 3 and parts[0] == "volumes" and parts[2] == "_data"


def _is_sensitive(source: str, sensitive: list[str]) -> str | None:
    real = source
    for top in sensitive:
        if _under(real, top) and real != top and _docker_own(real[len(top.rstrip("/")):]):
            continue
        # Also a parent of a sensitive path: binding / or /var exposes the socket too.
        if _under(real, top) or (real != "" and _under(top, real)):
            return top
    if posixpath.basename(real) in SENSITIVE_NAMES:
        return real
    return None


def image_refs(spec: dict) -> set[str]:
    ann = spec.get("annotations") or {}
    return {str(ann[k]) for k in IMAGE_ANNOTATIONS if k in ann}


def check_mounts(spec: dict, sensitive: list[str], allow: list[str],
                 resolve=os.path.realpath) -> None:
    """Refuse bind mounts of the container runtime's sockets and state, unless allow-listed."""
    refs = image_refs(spec)
    allowed = bool(refs & set(allow))
    for m in spec.get("mounts") or []:
        opts = m.get("options") or []
        if m.get("type") not in ("bind", None, "") and "bind" not in opts and "rbind" not in opts:
            continue
        src = m.get("source") or ""
        if not src.startswith("/"):
            continue
        for cand in {posixpath.normpath(src), resolve(src)}:
            hit = _is_sensitive(cand, sensitive)
            if hit and not allowed:
                raise Refused(f"bind mount of sensitive host path {src} ({hit}) into "
                              f"{m.get('destination')} is refused by interceptd "
                              "(allow the image in [runtime] sensitive_mount_allow)")


# ---------------------------------------------------------------- seccomp

def add_seccomp(spec: dict, notify: list, denied: list[dict], listener_path: str,
                metadata: str) -> None:
    """Attach the container to the daemon: its own profile unweakened (or the daemon's
    default profile when it has none) plus the notify and deny rules. `notify` holds OCI
    SCMP_ACT_NOTIFY rules or bare syscall names. interceptd/runtime/seccomp.py."""
    from . import seccomp, seccomp_default

    linux = spec.setdefault("linux", {})
    own = linux.get("seccomp") or seccomp_default.profile()
    linux["seccomp"] = seccomp.compose(own, notify, denied, listener_path, metadata)


# ---------------------------------------------------------------- cgroup

def ensure_cgroups_path(spec: dict, container_id: str, systemd: bool) -> bool:
    """Give the container its own cgroup when the config leaves it to the runtime's default.

    Returns True when the shim chose the path (so it owns the node at delete).
    """
    linux = spec.setdefault("linux", {})
    if linux.get("cgroupsPath"):
        return False
    linux["cgroupsPath"] = (f"system.slice:interceptd:{container_id}" if systemd
                            else f"/interceptd/{container_id}")
    return True


# ---------------------------------------------------------------- rootfs / mounts

def root_path(spec: dict, bundle: str) -> str:
    root = (spec.get("root") or {}).get("path")
    if not root:
        raise Refused("config.json has no root.path")
    return root if os.path.isabs(root) else os.path.normpath(os.path.join(bundle, root))


IDMAP_SKIP_PREFIXES = ("/dev", "/proc", "/sys")


def idmappable_binds(spec: dict) -> list[int]:
    """Indexes of bind mounts whose source should be id-mapped (volumes, not devices)."""
    out = []
    for i, m in enumerate(spec.get("mounts") or []):
        opts = m.get("options") or []
        if m.get("type") not in ("bind", None, "") and "bind" not in opts and "rbind" not in opts:
            continue
        src = m.get("source") or ""
        if not src.startswith("/") or any(_under(src, p) for p in IDMAP_SKIP_PREFIXES):
            continue
        out.append(i)
    return out
