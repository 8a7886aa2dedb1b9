"""Syscall vetting policy: what the runtime must notify or deny, and the daemon's handlers.

`notified_syscalls(cfg)` and `denied_syscalls(cfg)` build the container's seccomp section
(the runtime shim calls them, so the filter and the handlers never disagree);
`register(handlers, cfg)` installs the handlers in the daemon.

`[policy]` keys: `mounts` (default true), `ptrace` (true), `sysinfo` (true), `clock`
(true: vet adjtimex/clock_adjtime; false: deny them in the filter), `keyring` (false),
`bpf` (false). docs/policy.md explains every rule.
"""

from __future__ import annotations

from typing import Any

from interceptd.policy.deny import denied_syscalls as _denied
from interceptd.policy.deny import policy_section

__all__ = ["denied_syscalls", "notified_syscalls", "register"]

_FAMILIES = {
    "mounts": ("mount", "umount2", "fsopen", "fspick", "open_tree", "move_mount",
               "mount_setattr"),
    "ptrace": ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp"),
    "sysinfo": ("sysinfo",),
    "clock": ("adjtimex", "clock_adjtime"),
}


def _enabled(cfg: Any) -> list[str]:
    pol = policy_section(cfg)
    return [fam for fam in _FAMILIES if pol.get(fam, True)]


def notified_syscalls(cfg: Any = None) -> list[str]:
    """Syscall names the runtime adds as SCMP_ACT_NOTIFY."""
    out: list[str] = []
    for fam in _enabled(cfg):
        out.extend(_FAMILIES[fam])
    return out


def denied_syscalls(cfg: Any = None) -> list[dict[str, Any]]:
    """OCI seccomp rules (SCMP_ACT_ERRNO) for the kernel-global deny list."""
    rules = _denied(cfg)
    if not policy_section(cfg).get("clock", True):
        rules.append({"names": ["adjtimex", "clock_adjtime"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1})
    return rules


def register(handlers: Any, cfg: Any = None) -> None:
    """Register the Python handlers of every enabled family."""
    from interceptd.policy.glue import HANDLERS, logged

    for name in notified_syscalls(cfg):
        handlers.register(name, logged(HANDLERS[name]))
