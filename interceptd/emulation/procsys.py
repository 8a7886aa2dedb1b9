"""/proc/sys inside a container: which writes happen where, and what reads show.

Four kinds of sysctl, decided by `classify`:
- namespaced (net/*, IPC, UTS, mqueue, user/*, ns_last_pid): the kernel keeps one per
  namespace, so reads and writes pass through to the container's own namespace;
- container-only (kernel/panic, printk, kptr_restrict, ...): host-wide in the kernel, so a
  write is kept in the container's state and shown back to it alone; the kernel's value
  is untouched (the setting is cosmetic: the host's policy still applies);
- "max" (fs/file-max, nf_conntrack_max): the host's value is raised when the container
  asks for more and never lowered; the container is shown what it wrote (somaxconn, which
  sysbox-fs treats so too, is per network namespace in the kernel: namespaced here);
- everything else, read-only ones included: writes refused with EACCES, reads show the
  host's value.
`decide_write` and `render_read` are pure; the caller supplies the container's state and
the current backing value, and performs the decided action.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    NAMESPACED = "namespaced"
    CONTAINER = "container-only"
    MAX = "max"
    READONLY = "read-only"
    HOST = "host"


class Action(Enum):
    PASS = "pass"  # do the write in the container's own namespace
    STORE = "store"  # keep it in the container's state only
    RAISE = "raise"  # write the backing value (it grows), and keep it in the state
    KEEP = "keep"  # a max-rule value not above the backing one: state only
    DENY = "deny"


@dataclass(frozen=True)
class SysctlWrite:
    """What a write to a served /proc/sys value does (`decide_write`)."""

    action: Action
    value: str = ""  # normalized: integers separated by tabs, as the kernel prints them
    errno: int = 0
    reason: str = ""


Check = Callable[[list[int], list[int]], bool]  # (new values, current values) -> valid


def _range(lo: int, hi: int, count: int = 1) -> Check:
    return lambda new, cur: len(new) == count and all(lo <= v <= hi for v in new)


def _ptrace_scope(new: list[int], cur: list[int]) -> bool:
    # Yama: 3 ("no attach") cannot be changed once set.
    return len(new) == 1 and 0 <= new[0] <= 3 and (cur[:1] != [3] or new[0] == 3)


def _printk(new: list[int], cur: list[int]) -> bool:
    return 1 <= len(new) <= 4 and all(0 <= v <= 15 for v in new)


INT_MAX = (1 << 31) - 1
CONTAINER_ONLY: dict[str, Check] = {
    "kernel/panic": _range(-INT_MAX, INT_MAX),
    "kernel/panic_on_oops": _range(0, 1),
    "kernel/printk": _printk,
    "kernel/kptr_restrict": _range(0, 2),
    "kernel/dmesg_restrict": _range(0, 1),
    "kernel/sysrq": _range(0, 511),
    "kernel/pid_max": _range(301, 4 << 20),  # PID_MAX_LIMIT on 64-bit
    "kernel/yama/ptrace_scope": _ptrace_scope,
}
# path -> where the backing value lives: "host" (the initial namespaces). somaxconn is
# not here: the kernel keeps it per network namespace and lets the namespace's root set
# it, so it is namespaced (nothing of the host's to protect or raise).
MAX_RULE = {
    "fs/file-max": "host",
    "net/netfilter/nf_conntrack_max": "host",  # read-only outside the initial netns
}
READONLY = frozenset({"kernel/cap_last_cap", "kernel/ngroups_max"})
NAMESPACED_PREFIXES = ("net/", "fs/mqueue/", "user/")
NAMESPACED = frozenset({
    "kernel/hostname", "kernel/domainname",  # UTS
    "kernel/shmmax", "kernel/shmall", "kernel/shmmni", "kernel/shm_rmid_forced",  # IPC
    "kernel/msgmax", "kernel/msgmni", "kernel/msgmnb", "kernel/sem",
    "kernel/shm_next_id", "kernel/msg_next_id", "kernel/sem_next_id",
    "kernel/ns_last_pid",  # pid
})
MAX_VALUE_LEN = 256
# The sysctls whose files the daemon serves (and takes writes to) in a container; every
# other one is the kernel's own file in the container's procfs, where the kernel applies
# the table: a namespaced one is the container's namespace's, a host-wide one refuses
# the container's root (not the initial namespace's) with EACCES.
# kernel/hostname and domainname too: per UTS namespace, but the kernel lets only the
# initial namespace's root write their files, so the daemon passes such a write on to
# the container's own UTS namespace (PASS) and shows it its own names.
UTS = ("kernel/hostname", "kernel/domainname")
SERVED: tuple[str, ...] = (*CONTAINER_ONLY, *MAX_RULE, *UTS)


def normalize(path: str) -> str | None:
    """`kernel/panic` from `/proc/sys/kernel/panic`, `kernel.panic` or `kernel/panic`;
    None for anything that could name another place."""
    if "\0" in path:
        return None
    if path.startswith("/proc/sys/"):
        path = path[len("/proc/sys/"):]
    elif "/" not in path:
        path = path.replace(".", "/")
    norm = posixpath.normpath(path)
    if norm.startswith(("/", "..")) or norm in (".", "") or "/../" in f"/{norm}/":
        return None
    return norm


def classify(path: str) -> Kind:
    if path in CONTAINER_ONLY:
        return Kind.CONTAINER
    if path in MAX_RULE:
        return Kind.MAX
    if path in READONLY:
        return Kind.READONLY
    if path in NAMESPACED or path.startswith(NAMESPACED_PREFIXES):
        return Kind.NAMESPACED
    return Kind.HOST


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split()]
    except ValueError:
        return None


def _deny(code: int, reason: str) -> SysctlWrite:
    return SysctlWrite(Action.DENY, errno=code, reason=reason)


def decide_write(path: str, value: str, state: Mapping[str, str],
                 host_value: str | None) -> tuple[SysctlWrite, dict[str, str]]:
    """What to do with the container's write of `value` to /proc/sys/`path`; `state` is
    the container's stored values, `host_value` the current backing value."""
    same = dict(state)
    p = normalize(path)
    if p is None:
        return _deny(errno.ENOENT, f"sysctl path {path!r} refused"), same
    kind = classify(p)
    if kind is Kind.NAMESPACED:
        return SysctlWrite(Action.PASS, value, reason=f"{p}: namespaced"), same
    if kind is Kind.READONLY:
        return _deny(errno.EACCES, f"{p}: read-only"), same
    if kind is Kind.HOST:
        return _deny(errno.EACCES, f"{p}: host-wide, not writable from a container"), same
    new = _ints(value) if len(value) <= MAX_VALUE_LEN else None
    if not new:
        return _deny(errno.EINVAL, f"{p}: not a number: {value[:32]!r}"), same
    cur = _ints(state.get(p, host_value)) or []
    if kind is Kind.CONTAINER:
        if not CONTAINER_ONLY[p](new, cur):
            return _deny(errno.EINVAL, f"{p}: {new} out of range"), same
        if p == "kernel/printk":
            new = new + cur[len(new):]  # the kernel keeps the fields not written
        norm = "\t".join(str(v) for v in new)
        return SysctlWrite(Action.STORE, norm, reason=f"{p}: this container's own"), {
            **state, p: norm}
    if len(new) != 1 or not 0 <= new[0] <= INT_MAX:
        return _deny(errno.EINVAL, f"{p}: {new} out of range"), same
    backing = _ints(host_value) or [0]
    norm = str(new[0])
    if new[0] > backing[0]:
        return SysctlWrite(Action.RAISE, norm, reason=f"{p}: raised from {backing[0]}"), {
            **state, p: norm}
    return SysctlWrite(Action.KEEP, norm, reason=f"{p}: not lowered below {backing[0]}"), {
        **state, p: norm}


def render_read(path: str, state: Mapping[str, str], host_value: str | None) -> bytes | None:
    """What a read shows; None: read the file itself (namespaced, or nothing to add)."""
    p = normalize(path)
    if p is None or classify(p) is Kind.NAMESPACED:
        return None
    if p in state:
        return f"{state[p]}\n".encode()
    if host_value is None:
        return None
    return host_value.encode() if host_value.endswith("\n") else f"{host_value}\n".encode()
