"""Facts about processes, read from the host's /proc (the I/O half of policy/ptrace.py).

A pid the caller names is translated by the kernel (nsfs `NS_GET_PID_FROM_PIDNS` on the
caller's pid namespace, Linux 6.11): one ioctl, whatever the number of processes on the
host or in other containers. Every fact about the target is then read through one
`/proc/<pid>` directory fd, so all of them describe the same process even if its pid is
freed and reused meanwhile, and the translation is checked again afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from interceptd.kernel.consts import NS_GET_PARENT, NS_GET_PID_FROM_PIDNS, NS_GET_PID_IN_PIDNS

log = logging.getLogger("interceptd.policy")

_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class ProcView:
    """What the daemon found out about a target process (inspect)."""

    host_pid: int
    in_pidns: bool  # the container's pid namespace or one nested in it
    in_userns: bool  # the container's user namespace or one nested in it
    host_mntns: bool  # still in the host's mount namespace
    exe_inside: bool  # exe on a mount of its own mount table, not a memfd/deleted file
    cwd_inside: bool  # cwd on a mount of its own mount table
    exe: str = ""
    cwd: str = ""


class TargetChanged(Exception):
    """The pid named another process by the end of the check than at its start."""


def _ns_id(path: str, dir_fd: int | None = None) -> tuple[int, int]:
    st = os.stat(path, dir_fd=dir_fd)
    return (st.st_dev, st.st_ino)


def nspids(pid: int) -> list[int]:
    """The NSpid line: the pid in each pid namespace, outermost (host) first."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    raise ProcessLookupError(pid)


def ns_within(ns_path: str, ancestor: tuple[int, int], max_depth: int = 32,
              dir_fd: int | None = None) -> bool:
    """True if the namespace at ns_path is `ancestor` or nested in it (NS_GET_PARENT walk)."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for _ in range(max_depth):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == ancestor:
                return True
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:
                return False  # the initial namespace, or not an owning namespace
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)


def _from_pidns(pidns_fd: int, ns_pid: int) -> int | None:
    """The host pid of the task that is `ns_pid` in the pid namespace `pidns_fd` (a thread
    id names its thread, as ptrace takes it), or None if there is none."""
    try:
        return int(fcntl.ioctl(pidns_fd, NS_GET_PID_FROM_PIDNS, ns_pid))
    except OSError as e:
        if e.errno == errno.ESRCH:
            return None
        raise


def _in_pidns(pidns_fd: int, host_pid: int) -> int | None:
    try:
        return int(fcntl.ioctl(pidns_fd, NS_GET_PID_IN_PIDNS, host_pid))
    except OSError as e:
        if e.errno == errno.ESRCH:
            return None
        raise


def _open_caller_pidns(caller_pid: int, valid: Callable[[], bool] | None) -> int:
    fd = os.open(f"/proc/{caller_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    if valid is not None and not valid():  # the namespace is the caller's, not a reused pid's
        os.close(fd)
        raise ProcessLookupError(caller_pid)
    return fd


def host_pid_of(caller_pid: int, ns_pid: int,
                valid: Callable[[], bool] | None = None) -> int | None:
    """Translate a pid as the caller sees it into the host's pid, or None."""
    if ns_pid <= 0:
        return None
    fd = _open_caller_pidns(caller_pid, valid)
    try:
        return _from_pidns(fd, ns_pid)
    finally:
        os.close(fd)


def target_view(caller_pid: int, ns_pid: int, container_init: int,
                valid: Callable[[], bool] | None = None, tries: int = 3) -> ProcView | None:
    """Classify the process the caller names `ns_pid` (None: it names none).

    Cost: a handful of syscalls on the caller's and the target's /proc entries, plus the
    target's own mount table; nothing else on the host is looked at. Raises TargetChanged
    if the pid kept naming another process while it was being checked.
    """
    if ns_pid <= 0:
        return None
    pidns = _open_caller_pidns(caller_pid, valid)
    try:
        for _ in range(tries):
            host = _from_pidns(pidns, ns_pid)
            if host is None:
                return None
            try:
                d = os.open(f"/proc/{host}", _O_DIR)
            except FileNotFoundError:
                continue  # it exited between the two lookups
            try:
                view = inspect_dir(d, host, container_init)
                # Same process at the end: the directory still names a live task (a pid
                # is not reused while its task lives) and the caller's ns_pid is still it.
                if _alive(d) and _in_pidns(pidns, host) == ns_pid:
                    return view
            finally:
                os.close(d)
        raise TargetChanged(ns_pid)
    finally:
        os.close(pidns)


def _alive(dir_fd: int) -> bool:
    try:
        os.stat("stat", dir_fd=dir_fd)
        return True
    except OSError:
        return False


def pidfd_target(caller_pid: int, fd: int) -> int | None:
    """The host pid behind a pidfd the caller holds (fdinfo `Pid:`), or None."""
    try:
        with open(f"/proc/{caller_pid}/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        return None
    return None


def mount_ids(pid: int | str, dir_fd: int | None = None) -> set[int]:
    path = "mountinfo" if dir_fd is not None else f"/proc/{pid}/mountinfo"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    with open(fd, encoding="utf-8", errors="replace") as f:
        return {int(line.split(" ", 1)[0]) for line in f if line.strip()}


def fd_mnt_id(fd: int) -> int | None:
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return None


def _path_mnt_id(path: str, dir_fd: int | None = None) -> int | None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return fd_mnt_id(fd)
    finally:
        os.close(fd)


def inspect(host_pid: int, container_init: int) -> ProcView:
    """Classify `host_pid` against the container whose init is `container_init`."""
    d = os.open(f"/proc/{host_pid}", _O_DIR)
    try:
        return inspect_dir(d, host_pid, container_init)
    finally:
        os.close(d)


def inspect_dir(d: int, host_pid: int, container_init: int) -> ProcView:
    """`inspect` on an open /proc/<pid> directory: every fact is of that one process."""
    pid_ns = _ns_id(f"/proc/{container_init}/ns/pid")
    user_ns = _ns_id(f"/proc/{container_init}/ns/user")
    # Unreadable means refused: a target that cannot be shown inside counts as outside.
    in_pidns = in_userns = False
    host_mntns = True
    with contextlib.suppress(OSError):
        in_pidns = ns_within("ns/pid", pid_ns, dir_fd=d)
        in_userns = ns_within("ns/user", user_ns, dir_fd=d)
        host_mntns = _ns_id("ns/mnt", d) == _ns_id("/proc/self/ns/mnt")
    exe = cwd = ""
    exe_inside = cwd_inside = False
    with contextlib.suppress(OSError):
        exe = os.readlink("exe", dir_fd=d)
    with contextlib.suppress(OSError):
        cwd = os.readlink("cwd", dir_fd=d)
    try:
        ids = mount_ids(host_pid, dir_fd=d)
        if exe and not exe.endswith(" (deleted)") and not exe.startswith("/memfd:"):
            exe_inside = _path_mnt_id("exe", d) in ids
        cwd_inside = _path_mnt_id("cwd", d) in ids
    except (OSError, ValueError):
        pass
    return ProcView(host_pid, in_pidns, in_userns, host_mntns, exe_inside, cwd_inside, exe, cwd)


def start_ticks(pid: int) -> int:
    """When `pid` started, in clock ticks after boot (field 22 of its stat): with the pid,
    what names one process across pid reuse."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def read_comm(pid: int) -> str:
    """/proc/<pid>/comm without its newline; "" once the process is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""
