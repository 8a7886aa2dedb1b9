"""Syscall vetting policy: what the runtime must notify or deny, and the daemon's handlers.

`notified_syscalls(cfg)` and `denied_syscalls(cfg)` build the container's seccomp section
(the runtime shim calls them, so the filter and the handlers never disagree);
`interceptd.handlers.table.register(handlers, cfg)` installs the handlers in the daemon.

`[policy]` keys: `mounts` (default true), `ptrace` (true), `sysinfo` (true), `clock`
(true: vet adjtimex/clock_adjtime; false: deny them in the filter), `keyring` (true),
`bpf` (false). docs/policy.md explains every rule.
"""

from __future__ import annotations

from typing import Any

from interceptd.kernel.consts import (
    AT_RECURSIVE,
    OPEN_TREE_CLONE,
    PTRACE_ATTACH,
    PTRACE_POKEDATA,
    PTRACE_POKETEXT,
    PTRACE_POKEUSER,
    PTRACE_SEIZE,
)
from interceptd.policy.deny import Sections, masked_eq, policy_section
from interceptd.policy.deny import denied_syscalls as _denied

__all__ = ["denied_syscalls", "notified_syscalls", "notify_rules"]

_FAMILIES = {
    "mounts": ("mount", "umount2", "fsopen", "fspick", "open_tree", "move_mount",
               "mount_setattr"),
    "ptrace": ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp"),
    "sysinfo": ("sysinfo",),
    "clock": ("adjtimex", "clock_adjtime"),
}


def _enabled(cfg: Sections | None) -> list[str]:
    pol = policy_section(cfg)
    return [fam for fam in _FAMILIES if pol.get(fam, True)]


def notified_syscalls(cfg: Sections | None = None) -> list[str]:
    """Syscall names the runtime adds as SCMP_ACT_NOTIFY."""
    out: list[str] = []
    for fam in _enabled(cfg):
        out.extend(_FAMILIES[fam])
    return out


# Calls worth a round trip only for some argument values: everything else is allowed by the
# filter itself (the handlers would answer CONTINUE anyway). ptrace(request) for the
# requests that make a link or write a tracee; open_tree only for a recursive clone (a
# non-recursive one is refused by the deny list's rule, which must not overlap: libseccomp
# keeps one action per argument value).
_NARROWED: dict[str, list[list[dict[str, Any]]]] = {
    "ptrace": [[masked_eq(0, req)] for req in (PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_POKETEXT,
                                                   PTRACE_POKEDATA, PTRACE_POKEUSER)],
    "open_tree": [[masked_eq(2, OPEN_TREE_CLONE | AT_RECURSIVE, OPEN_TREE_CLONE | AT_RECURSIVE)]],
}


def notify_rules(cfg: Sections | None = None) -> list[dict[str, Any]]:
    """The same set as `notified_syscalls` as OCI `SCMP_ACT_NOTIFY` rules, narrowed by
    argument where the policy only cares about some values (strace's PEEK/GETREGS stream
    then never leaves the kernel). A runtime may use either; the handlers are correct for
    both."""
    plain = [n for n in notified_syscalls(cfg) if n not in _NARROWED]
    rules: list[dict[str, Any]] = [{"names": plain, "action": "SCMP_ACT_NOTIFY"}]
    for name, alternatives in _NARROWED.items():
        if name in notified_syscalls(cfg):
            rules.extend({"names": [name], "action": "SCMP_ACT_NOTIFY", "args": args}
                         for args in alternatives)
    return rules


def denied_syscalls(cfg: Sections | None = None) -> list[dict[str, Any]]:
    """OCI seccomp rules (SCMP_ACT_ERRNO) for the kernel-global deny list."""
    rules = _denied(cfg)
    if not policy_section(cfg).get("clock", True):
        rules.append({"names": ["adjtimex", "clock_adjtime"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1})
    return rules
