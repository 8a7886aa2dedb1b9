"""crun's compiled seccomp filter, reused for the next container with the same profile.

crun compiles a config's seccomp section with libseccomp at every create (Docker's
default profile composed with interceptd's rules: ~25 ms of a ~50 ms create on the
shared VM) and keeps the result in its state directory (`<root>/<id>/seccomp.bpf`).
crun also takes a compiled filter instead (`run.oci.seccomp_bpf_data`, base64, crun
>= 1.0 and 1.8.1 here): it then skips the compile and still applies the section's
flags and listener. So the prepare service collects what crun compiled for one
container and hands it to the next container whose section is the same: the filter
is crun's own compile of exactly that section, byte for byte, never one of ours.

Keyed by the section (without its listener path and metadata, which do not enter
the filter) and by the runtime binary's identity (device, inode, size, mtime): an
upgraded crun compiles again. A runtime that leaves no seccomp.bpf (runc) is marked
and never asked again. Only crun's state under a root-owned directory, read once
through O_NOFOLLOW, as a root-owned regular file of whole BPF instructions, is taken.
The callers' own `run.oci.seccomp*` annotations are refused (spec.check_annotations).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading

ANNOTATION = "run.oci.seccomp_bpf_data"
# Which composed section a rewritten config carries (section_digest).
DIGEST = "io.interceptd.seccomp-digest"
# crun's seccomp annotations a caller may give: this one only makes crun stricter
# (an unknown syscall name fails the create). The others replace the section's
# filter (bpf_data) or hand the listener elsewhere (receiver, plugins).
CALLER_ALLOWED = frozenset({"run.oci.seccomp_fail_unknown_syscall"})
# The section's keys that do not enter the compiled filter.
_NOT_COMPILED = ("listenerPath", "listenerMetadata")
_INSN = 8  # sizeof(struct sock_filter)
_MAX_INSNS = 4096  # BPF_MAXINSNS


def check_annotations(spec: dict) -> None:
    """Refuse a config whose annotations would make crun bypass the composed filter."""
    from .errors import Refused

    for name in spec.get("annotations") or {}:
        if name.startswith("run.oci.seccomp") and name not in CALLER_ALLOWED:
            raise Refused(f"annotation {name} is not allowed: it would replace the "
                          "seccomp filter interceptd attaches (or hand its listener "
                          "elsewhere)")


def section_digest(section: dict) -> str:
    """The identity of what a runtime compiles from a seccomp section."""
    body = {k: v for k, v in section.items() if k not in _NOT_COMPILED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def runtime_identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        s = os.stat(path)
    except OSError:
        return None
    return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)


def _root_owned_dir(path: str) -> bool:
    try:
        s = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (stat.S_ISDIR(s.st_mode) and s.st_uid == 0
            and not s.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def read_compiled(state_root: str, cid: str) -> bytes | None:
    """crun's seccomp.bpf of container `cid` under `state_root`, if it is trustworthy."""
    if not cid or "/" in cid or cid in (".", ".."):
        return None
    state = os.path.join(state_root, cid)
    if not (_root_owned_dir(state_root) and _root_owned_dir(state)):
        return None
    try:
        fd = os.open(os.path.join(state, "seccomp.bpf"),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        s = os.fstat(fd)
        if (not stat.S_ISREG(s.st_mode) or s.st_uid != 0
                or s.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                or not 0 < s.st_size <= _MAX_INSNS * _INSN or s.st_size % _INSN):
            return None
        data = os.read(fd, s.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == s.st_size else None


class BpfCache:
    """digest -> base64 of crun's compiled filter, per runtime binary. Thread-safe."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._data: dict[tuple, str] = {}
        self._barren: set[tuple] = set()  # runtimes that leave no seccomp.bpf

    def lookup(self, runtime: str, digest: str) -> tuple[str | None, bool]:
        """(the annotation's value or None, whether collecting it after create is worth it)."""
        ident = runtime_identity(runtime)
        if ident is None:
            return None, False
        with self._lock:
            if ident in self._barren:
                return None, False
            return self._data.get((ident, digest)), True

    def collect(self, runtime: str, digest: str, state_root: str | None, cwd: str,
                cid: str) -> bool:
        """After a successful create that compiled `digest` itself: keep its filter."""
        ident = runtime_identity(runtime)
        if ident is None:
            return False
        if state_root:
            root = os.path.join(cwd, state_root)
        else:  # the runtime's default for uid 0
            root = "/run/crun" if "crun" in os.path.basename(runtime) else "/run/runc"
        root = os.path.normpath(root)
        data = read_compiled(root, cid)
        with self._lock:
            if data is None:
                # runc's state (state.json) has no compiled filter, and runc takes
                # none; anything else (say the container already deleted) may pass.
                if os.path.exists(os.path.join(root, cid, "state.json")):
                    self._barren.add(ident)
                return False
            if len(self._data) >= self.size:
                self._data.pop(next(iter(self._data)))
            self._data[(ident, digest)] = base64.b64encode(data).decode()
        return True
