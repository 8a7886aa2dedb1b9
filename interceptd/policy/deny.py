"""The kernel-global deny list, enforced in the container's seccomp filter itself (an errno,
no round trip to the daemon). Entries are OCI runtime-spec `linux.seccomp.syscalls` items.

32-bit arguments: seccomp compares 64-bit registers, and the x86_64 ABI leaves the upper
half of a register holding an `int` undefined, so every comparison on an int argument
masks it to 32 bits (SCMP_CMP_MASKED_EQ; in OCI `value` is the mask, `valueTwo` the datum).
"""

from __future__ import annotations

import errno
from typing import Any, Protocol

from interceptd.kernel.consts import (
    AF_MAX,
    AF_VSOCK,
    AT_RECURSIVE,
    OPEN_TREE_CLONE,
    PERF_FLAG_PID_CGROUP,
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    UFFD_USER_MODE_ONLY,
)

U32 = 0xFFFFFFFF
INT_SIGN = 0x80000000

# Kernel-global: they act on the whole machine (modules, kexec, swap, clocks, quotas,
# accounting, the kernel log, raw I/O ports) or bypass the mount namespace (handles);
# or they escape the filter itself (io_uring), or are obsolete attack surface (uselib,
# vm86), or would change mounts without the daemon (i386's umount). docs/policy.md has
# the reason for each.
ALWAYS_DENIED = (
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "iopl",
    "ioperm",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "stime",
    "clock_settime64",
    "nfsservctl",
    "uselib",
    "vm86",
    "vm86old",
    # An io_uring's operations (IORING_OP_OPENAT, _SOCKET, _CONNECT, ...) run without
    # passing seccomp: a ring would reach whatever the filter refuses. Docker denies them.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # i386's oldumount(path): the daemon vets umount2 (x86_64's only umount).
    "umount",
    # request_key can make the kernel run /sbin/request-key on the host, as host root,
    # with a description the container chose.
    "request_key",
)
# Allowed unless `[policy] keyring = false`: container runtimes join and create session
# keyrings (runc, crun, systemd), and inside a user namespace the kernel keys permissions
# and the per-user keyrings by the mapped (host) uid, so the host root's keys stay out of
# reach (docs/policy.md "Keyrings"; request_key, which runs a host helper, stays denied).
KEYRING = ("add_key", "keyctl")


def masked_eq(index: int, datum: int, mask: int = U32) -> dict[str, Any]:
    """An OCI argument condition: (arg[index] & mask) == datum."""
    return {"index": index, "value": mask, "valueTwo": datum, "op": "SCMP_CMP_MASKED_EQ"}


def _rule(names: list[str] | tuple[str, ...], err: int, args: list[dict[str, Any]] | None = None,
          why: str = "") -> dict[str, Any]:
    # `why` documents the rule here only: OCI has no comment field, and crun's parser is
    # stricter about unknown keys than runc's.
    del why
    r: dict[str, Any] = {"names": list(names), "action": "SCMP_ACT_ERRNO", "errnoRet": err}
    if args:
        r["args"] = args
    return r


class Sections(Protocol):
    """What the policy reads of a configuration: its sections (config.Config; the runtime
    shim's raw file, runtime/policylink.py)."""

    sections: dict[str, Any]


def policy_section(cfg: Sections | None) -> dict[str, Any]:
    """The `[policy]` section ({} without a configuration)."""
    if cfg is None:
        return {}
    return dict(cfg.sections.get("policy", {}))


def denied_syscalls(cfg: Sections | None = None) -> list[dict[str, Any]]:
    pol = policy_section(cfg)
    names = list(ALWAYS_DENIED)
    if not pol.get("keyring", True):
        names += KEYRING
    if not pol.get("bpf", False):
        names.append("bpf")
    rules = [_rule(names, errno.EPERM, why="kernel-global")]
    # perf_event_open(attr, pid, cpu, group_fd, flags): pid == -1 watches every process on
    # a CPU; PERF_FLAG_PID_CGROUP watches a whole cgroup. Per-process use stays allowed.
    # The sign bit of the 32-bit pid: -1 whatever the upper half holds, and other negative
    # pids, which the kernel refuses anyway (ESRCH), so one bit is the whole test (its
    # complement, needed beside a default-deny profile, is one rule, not 32).
    rules.append(_rule(["perf_event_open"], errno.EPERM, [masked_eq(1, INT_SIGN, INT_SIGN)],
                       "interceptd: system-wide perf_event_open"))
    rules.append(_rule(["perf_event_open"], errno.EPERM,
                       [masked_eq(4, PERF_FLAG_PID_CGROUP, PERF_FLAG_PID_CGROUP)],
                       "interceptd: cgroup-wide perf_event_open"))
    # seccomp(op, flags & NEW_LISTENER): a nested supervisor would take the notifications
    # of its own filter; EINVAL as if the flag were unknown. Only SET_MODE_FILTER accepts
    # flags (every other op answers EINVAL to any), so the flag alone is the test, and its
    # complement is one rule.
    rules.append(_rule(
        ["seccomp"], errno.EINVAL,
        [masked_eq(1, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_NEW_LISTENER)],
        "interceptd: no nested seccomp listener",
    ))
    # userfaultfd without UFFD_USER_MODE_ONLY handles faults in kernel mode too: a
    # classic way to stop the kernel mid-copy and win a race. User-mode-only is harmless.
    rules.append(_rule(["userfaultfd"], errno.EPERM,
                       [masked_eq(0, 0, UFFD_USER_MODE_ONLY)],
                       "interceptd: userfaultfd needs UFFD_USER_MODE_ONLY"))
    # socket(AF_VSOCK, ...): vsock is not network-namespaced; it reaches the host's (or
    # the hypervisor's) vsock services from any container. Docker refuses it too. The
    # family is an int below AF_MAX (46): its low 6 bits decide it, any higher bit makes
    # an invalid family the kernel refuses anyway, so one masked compare is the test and
    # its complement (beside a default-deny profile) is 6 one-bit rules.
    rules.append(_rule(["socket"], errno.EPERM, [masked_eq(0, AF_VSOCK, _SIX_BITS)],
                       "interceptd: AF_VSOCK"))
    rules.append(open_tree_flat_clone())
    return rules


_SIX_BITS = 0x3F
assert AF_MAX <= _SIX_BITS + 1


def open_tree_flat_clone() -> dict[str, Any]:
    """open_tree(OPEN_TREE_CLONE) without AT_RECURSIVE: a copy of one mount without the
    mounts on it, so a flat clone of /proc or /sys shows what their masks hide. Refused in
    the filter (the daemon's decide_open_tree refuses it too, for filters that notify
    every open_tree: libseccomp drops a conditional rule when the same syscall also has an
    unconditional one)."""
    return _rule(["open_tree"], errno.EPERM,
                 [masked_eq(2, OPEN_TREE_CLONE, OPEN_TREE_CLONE | AT_RECURSIVE)],
                 "interceptd: non-recursive open_tree clone")
