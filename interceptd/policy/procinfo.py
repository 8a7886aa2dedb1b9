"""Facts about processes, read from the host's /proc (the I/O half of ptrace.py)."""

from __future__ import annotations

import contextlib
import fcntl
import os

from interceptd.policy.ptrace import ProcView

NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2)


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def nspids(pid: int) -> list[int]:
    """The NSpid line: the pid in each pid namespace, outermost (host) first."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    raise ProcessLookupError(pid)


def ns_within(ns_path: str, ancestor: tuple[int, int], max_depth: int = 32) -> bool:
    """True if the namespace at ns_path is `ancestor` or nested in it (NS_GET_PARENT walk)."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
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


def host_pid_of(caller_pid: int, ns_pid: int) -> int | None:
    """Translate a pid as the caller sees it into the host's pid, or None."""
    if ns_pid <= 0:
        return None
    level = len(nspids(caller_pid)) - 1
    caller_ns = _ns_id(f"/proc/{caller_pid}/ns/pid")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            chain = nspids(int(name))
            if len(chain) > level and chain[level] == ns_pid and ns_within(
                f"/proc/{name}/ns/pid", caller_ns
            ):
                return int(name)
        except (OSError, ProcessLookupError, ValueError):
            continue
    return None


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


def mount_ids(pid: int) -> set[int]:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as f:
        return {int(line.split(" ", 1)[0]) for line in f if line.strip()}


def fd_mnt_id(fd: int) -> int | None:
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return None


def _path_mnt_id(path: str) -> int | None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return fd_mnt_id(fd)
    finally:
        os.close(fd)


def inspect(host_pid: int, container_init: int) -> ProcView:
    """Classify `host_pid` against the container whose init is `container_init`."""
    pid_ns = _ns_id(f"/proc/{container_init}/ns/pid")
    user_ns = _ns_id(f"/proc/{container_init}/ns/user")
    in_pidns = ns_within(f"/proc/{host_pid}/ns/pid", pid_ns)
    in_userns = ns_within(f"/proc/{host_pid}/ns/user", user_ns)
    host_mntns = _ns_id(f"/proc/{host_pid}/ns/mnt") == _ns_id("/proc/self/ns/mnt")
    exe = cwd = ""
    exe_inside = cwd_inside = False
    with contextlib.suppress(OSError):
        exe = os.readlink(f"/proc/{host_pid}/exe")
    with contextlib.suppress(OSError):
        cwd = os.readlink(f"/proc/{host_pid}/cwd")
    try:
        ids = mount_ids(host_pid)
        if exe and not exe.endswith(" (deleted)") and not exe.startswith("/memfd:"):
            exe_inside = _path_mnt_id(f"/proc/{host_pid}/exe") in ids
        cwd_inside = _path_mnt_id(f"/proc/{host_pid}/cwd") in ids
    except (OSError, ValueError):
        pass
    return ProcView(host_pid, in_pidns, in_userns, host_mntns, exe_inside, cwd_inside, exe, cwd)
