"""The one call scope every handler of the mount family runs in: the container's policy
state and its lock, the daemon-side fds closed whatever happens, executor operations
performed with kernel errors mapped to the answer once, and decisions turned into
Verdicts. Also the daemon's settings for the policy (`configure`).

Every handler follows the same order: copy pointer arguments (bounded; the core checks
ID_VALID after each read), resolve the paths the decision depends on *in the caller's
context* (resolve.py), decide with a pure function (policy/), then perform allowed calls
through the executor on the copies (`perform`, `run_ops`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from interceptd.kernel import consts as c
from interceptd.kernel import executors
from interceptd.kernel.consts import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWPID,
    NS_MOUNT,
)
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.decision import Decision
from interceptd.policy.deny import policy_section
from interceptd.policy.mounts import MountContext
from interceptd.policystore import ContainerPolicy, PolicyStore
from interceptd.seams import Config, Container, ExecResult, Request
from interceptd.verdict import Verdict

try:
    from interceptd import core as _core
except ImportError:  # the C core is not built (kernel-free unit tests)
    _core = None  # type: ignore[assignment]

@dataclass
class Settings:
    persist_dir: str | None = None  # <state_dir>/policy
    fuse_dir: str | None = None  # <state_dir>/fs: the emulated files' tree
    native: bool = True  # `[policy] native`


settings = Settings()


def configure(cfg: Config | None) -> None:
    """Where the per-container state is kept across daemon restarts (<state_dir>/policy),
    and whether the native mount helper is used (`[policy] native`, default true)."""
    state_dir = cfg.daemon.state_dir if cfg is not None else None
    settings.persist_dir = os.path.join(state_dir, "policy") if state_dir else None
    settings.fuse_dir = os.path.join(state_dir, "fs") if state_dir else None
    settings.native = bool(policy_section(cfg).get("native", True))


_stores_lock = threading.Lock()


def store_of(container: Container) -> PolicyStore:
    """The container's PolicyStore, made on first use and kept on its record."""
    store = container.policy
    if store is None:
        with _stores_lock:
            store = container.policy
            if store is None:
                store = container.policy = PolicyStore(settings.persist_dir, settings.fuse_dir)
    return store


def state_of(container: Container) -> ContainerPolicy:
    return store_of(container).state(container)


def release(container: Container) -> None:
    """The container's last notify fd is gone: its policy state goes with it."""
    store, container.policy = container.policy, None
    if store is not None:
        store.close()


class KernelError(Exception):
    """An executor operation the decision allowed failed with the kernel's errno."""

    def __init__(self, d: Decision, err: int, op: str) -> None:
        super().__init__(err, op)
        self.verdict = kernel_error(d, err, op)


def perform(req: Request, d: Decision, ns: int, op: str, *args: object,
            what: str | None = None) -> ExecResult:
    """`op` through the executor; KernelError (answered by `locked`) if it fails."""
    res = exec_op(req, ns, op, *args)
    if res.errno:
        raise KernelError(d, res.errno, what or op)
    return res


def locked(req: Request, body: Callable[..., Verdict], *args: object,
           prepare: Callable[[Request, ContainerPolicy], None] | None = None) -> Verdict:
    """`body(req, st, fds, *args)` under the container's policy lock, with its fds closed
    and its KernelErrors answered whatever happens; `prepare(req, st)` first, before the
    lock (mount/umount2 start the container's native mount helper there)."""
    st = state_of(req.container)
    if prepare is not None:
        prepare(req, st)
    fds = Fds()
    ch = req.container.channel
    with st.lock:
        # The native helper's too: each of us checks a path's top mount, then acts on
        # the path; the other's umount in between would bare what lay beneath (a mask).
        if ch is not None:
            ch.act_lock(True)
        try:
            return body(req, st, fds, *args)
        except KernelError as e:
            return e.verdict
        finally:
            if ch is not None:
                ch.act_lock(False)
            fds.close()


def ns_for(fstype: str | None) -> int:
    # The mount namespace always: fsopen and mount need CAP_SYS_ADMIN over the mount
    # namespace's owner, which the executor has only inside the caller's user namespace.
    ns = NS_MOUNT
    if fstype == "proc":
        ns |= CLONE_NEWPID  # procfs shows the pid namespace of its mounter
    elif fstype == "sysfs":
        ns |= CLONE_NEWNET  # sysfs shows the network namespace of its mounter
    elif fstype in ("cgroup", "cgroup2"):
        ns |= CLONE_NEWCGROUP
    elif fstype == "mqueue":
        ns |= CLONE_NEWIPC
    return ns


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def u32(v: int) -> int:
    return v & 0xFFFFFFFF


def read_str(req: Request, addr: int, max_len: int) -> str | None:
    if addr == 0:
        return None
    return os.fsdecode(req.read_string(addr, max_len))


def cgroupns_private(pid: int) -> bool:
    try:
        a = os.stat(f"/proc/{pid}/ns/cgroup")
        b = os.stat("/proc/self/ns/cgroup")  # the daemon runs in the host's
    except OSError:
        return False
    return (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino)


# Executor ops that change a mount table (`exec_op` forgets the container's cached tables
# after them; the cache also sees every change by itself, see kernel/mounttable.TableCache).
MOUNT_CHANGING = frozenset({"mount", "umount2", "umount2_checked", "move_mount",
                             "mount_setattr"})


def exec_op(req: Request, namespaces: int, op: str, *args: object) -> ExecResult:
    try:
        res = executors.run(req, namespaces, op, *args)
    finally:
        if op in MOUNT_CHANGING:
            store_of(req.container).tables.invalidate()
    if op in MOUNT_CHANGING:
        # Done, not answered: a successor must not do it again (a umount replayed
        # fails EINVAL); it answers with this result instead (csrc/journal.c).
        n = req.notif
        req.core.journal_mark(n.notify_fd, n.pid, n.id, res.errno)
    return res


def context(req: Request, st: ContainerPolicy, table: MountTable | None = None, *,
             fstype: str | None = None) -> MountContext:
    """The decision's view; the mount table is read only if the decision looks at it, the
    cgroup namespace only for a cgroup filesystem (`fstype`, matched loosely so that no
    spelling the decision treats as cgroup skips the check)."""
    return MountContext(
        table=table if table is not None
        else store_of(req.container).tables.lazy(req.pid, req.valid),
        imm=st.imm,
        cgroupns_private=cgroupns_private(req.pid) if "cgroup" in (fstype or "") else True,
        masked_paths=st.masked,
        readonly_paths=st.readonly,
        emulated_paths=st.emulated,
    )


def verdict(d: Decision) -> Verdict:
    why = reason(d)
    if d.kind == "errno":
        return Verdict.errno(d.errno, why)
    if d.kind == "value":
        return Verdict.value(d.value, why)
    if d.kind == "continue":
        return Verdict.cont(why)
    raise ValueError(f"decision {d.kind} needs performing")


def reason(d: Decision) -> str:
    """The reason with the decoded arguments (events carry raw registers only)."""
    if not d.details:
        return d.reason
    parts = " ".join(f"{k}={v}" for k, v in d.details.items() if v is not None)
    return f"{d.reason} [{parts}]"


def kernel_error(d: Decision, err: int, op: str) -> Verdict:
    name = errno.errorcode.get(err, str(err))
    return Verdict.errno(err, f"{reason(d)}; {op}: {name}")


class Fds:
    """Daemon-side fds to close whatever happens."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def add(self, fd: int) -> int:
        if fd >= 0:
            self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def run_ops(req: Request, d: Decision, ns: int) -> ExecResult | None:
    """Run a decision's ExecOps (KernelError at the first that fails); the last result."""
    res = None
    for op in d.ops:
        res = perform(req, d, ns, op.op, *op.args)
    return res


def lacks_cap_sys_admin(req: Request) -> Verdict | None:
    """EPERM for a caller without CAP_SYS_ADMIN (in its own user namespace): the kernel
    would refuse it the call, and the executor that performs it has every capability."""
    if _core is None:
        return None
    try:
        if _core.has_cap(req.pid, c.CAP_SYS_ADMIN):
            return None
    except OSError:
        raise ProcessLookupError(req.pid) from None
    return Verdict.errno(errno.EPERM, f"{req.syscall}: the caller lacks CAP_SYS_ADMIN")
