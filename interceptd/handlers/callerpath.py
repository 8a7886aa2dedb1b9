"""Paths that name a process's objects through the caller's /proc: /proc/self/fd/N,
/proc/thread-self/..., /proc/<pid>/fd/N, cwd, root and exe.

Container runtimes mount onto /proc/self/fd/N (an O_PATH fd they opened safely beneath
the rootfs) so that no symlink can redirect the mount. Walked by the daemon's executor,
such a path would name the executor's own /proc entry (or none: the executor is not in
the container's pid namespace). So the object is taken from the caller itself: its fd
with pidfd_getfd, its cwd/root through the host's /proc/<pid>; the rest of the path is
then walked from that fd, and the fd is what the decision checks and what the mount acts
on. Another process's /proc/<pid>/... is opened through the caller's own procfs (so <pid>
is numbered as the caller sees it), and only for a process in the caller's pid namespace
(or one nested in it) and user namespace (or one nested in it) that the caller could
inspect itself (CAP_SYS_PTRACE in its effective set, or the same uids): anything else is
refused (EACCES), never resolved in the daemon's context. A path that only looks like one
(the caller's /proc is no procfs root) is left to the ordinary resolution.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass

from interceptd.kernel.consts import (
    CAP_SYS_PTRACE,
    NS_GET_PARENT,
    PROC_ROOT_INO,
    PROC_SUPER_MAGIC,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
)
from interceptd.kernel.mountapi import fd_fs_magic, openat2
from interceptd.kernel.pidfd import pidfd_getfd, thread_pidfd
from interceptd.kernel.procinfo import ns_within
from interceptd.seams import Request


@dataclass(frozen=True)
class ProcRef:
    who: str  # "self", "thread-self" or "pid"
    pid: int | None  # for "pid": as the caller's procfs numbers it
    what: str  # "fd", "cwd", "root" or "exe"
    fd: int | None  # for "fd"
    rest: str  # the path below the object ("" = the object itself)
    tid: int | None = None  # /proc/<pid|self>/task/<tid>/...: that thread's object


def _number(s: str) -> int | None:
    # procfs takes decimal without leading zeros (name_to_int), nothing else
    if not s.isdigit() or not s.isascii() or (len(s) > 1 and s[0] == "0") or len(s) > 10:
        return None
    n = int(s)
    return n if n < 1 << 31 else None


def parse(path: str) -> ProcRef | None:
    """The reference `path` makes to a process's fd, cwd or root through /proc, or None.

    Only the plain spellings: "//" and "." components are what the kernel also skips;
    a ".." or a symlink before the object is left to the ordinary resolution."""
    if not path.startswith("/"):
        return None
    comps = [p for p in path.split("/") if p not in ("", ".")]
    if len(comps) < 3 or comps[0] != "proc":
        return None
    if comps[1] in ("self", "thread-self"):
        who, pid = comps[1], None
    else:
        who, pid = "pid", _number(comps[1])
        if pid is None:
            return None
    tid = None
    if comps[2] == "task" and who != "thread-self" and len(comps) >= 5:
        tid = _number(comps[3])
        if tid is None:
            return None
        comps = comps[:2] + comps[4:]
    fd = None
    if comps[2] == "fd" and len(comps) >= 4:
        fd = _number(comps[3])
        if fd is None:
            return None
        what, rest = "fd", comps[4:]
    elif comps[2] in ("cwd", "root", "exe"):
        what, rest = comps[2], comps[3:]
    else:
        return None
    tail = "/".join(rest)
    if not tail and path.endswith("/"):
        tail = "."  # a trailing slash: it must be a directory
    return ProcRef(who, pid, what, fd, tail, tid)


def _status_ids(host_tid: int) -> tuple[int, list[int], list[int]]:
    """(host tgid, NStgid, NSpid) of a thread, outermost namespace first."""
    tgid, nstgid, nspid = -1, [], []
    with open(f"/proc/{host_tid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key == "Tgid":
                tgid = int(val)
            elif key == "NStgid":
                nstgid = [int(v) for v in val.split()]
            elif key == "NSpid":
                nspid = [int(v) for v in val.split()]
    return tgid, nstgid, nspid


def _caller_procfs(host_tid: int) -> int | None:
    """An fd of the caller's /proc if it is the root of a procfs, else None."""
    root = os.open(f"/proc/{host_tid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(root, "proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                     RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        if os.fstat(fd).st_ino == PROC_ROOT_INO and fd_fs_magic(fd) == PROC_SUPER_MAGIC:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _ns_level(host_tid: int, procfd: int) -> int | None:
    """How many pid namespaces up from the caller's the procfs `procfd` shows: its pid 1
    lives in the procfs's namespace, so its ns/pid names it."""
    try:
        one = os.open("1/ns/pid", os.O_PATH | os.O_CLOEXEC, dir_fd=procfd)
    except OSError:
        return None
    try:
        want = os.fstat(one)
    finally:
        os.close(one)
    fd = os.open(f"/proc/{host_tid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for level in range(33):  # the kernel nests at most 32 pid namespaces
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                return level
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:
                return None
            os.close(fd)
            fd = parent
    finally:
        os.close(fd)
    return None


def _whose(req: Request, ref: ProcRef) -> tuple[str, int, int] | None:
    """("self"|"thread-self", host tgid, host tid) when `ref` names the caller, ("other",
    the caller's procfs fd (the caller's to close), -1) for another pid, else None."""
    tgid, nstgid, nspid = _status_ids(req.pid)
    who = ref.who
    if ref.tid is not None:
        # a thread's directory, opened in the caller's procfs (the caller's own threads
        # pass the same checks as another process's)
        procfd = _caller_procfs(req.pid)
        if procfd is None:
            return None
        return "other", procfd, -1
    if who == "pid":
        procfd = _caller_procfs(req.pid)
        if procfd is None:
            return None
        try:
            level = _ns_level(req.pid, procfd)
            if level is None or level >= len(nspid) or level >= len(nstgid):
                return None
            if ref.pid == nstgid[-1 - level]:
                who = "self"
            elif ref.pid == nspid[-1 - level]:
                who = "thread-self"
            else:
                # another process, numbered as the caller's procfs numbers it
                keep, procfd = procfd, -1
                return "other", keep, -1
        finally:
            if procfd >= 0:
                os.close(procfd)
    else:
        procfd = _caller_procfs(req.pid)
        if procfd is None:
            return None  # no procfs at /proc: the path is an ordinary one there
        os.close(procfd)
    return who, tgid, req.pid


def open_object(req: Request, ref: ProcRef) -> int | None:
    """A daemon-held fd of the object `ref` names as the caller sees it, or None when
    `ref` is not about the caller. Raises OSError with the kernel's errno for a missing
    fd, ProcessLookupError if the caller went away."""
    got = _whose(req, ref)
    if got is None:
        return None
    who, tgid, tid = got
    if who == "other":
        try:
            fd = _other_object(req, ref, tgid)
        finally:
            os.close(tgid)
    elif ref.what == "fd":
        assert ref.fd is not None
        # thread-self: the calling thread's table (before 6.9 the leader's)
        pidfd = os.pidfd_open(tgid) if who == "self" else thread_pidfd(tid)
        try:
            fd = pidfd_getfd(pidfd, ref.fd)
        except OSError as e:
            if e.errno == errno.EBADF:
                raise FileNotFoundError(errno.ENOENT, "no such fd in the caller") from None
            raise
        finally:
            os.close(pidfd)
    else:
        fd = os.open(f"/proc/{tgid if who == 'self' else tid}/{ref.what}",
                     os.O_PATH | os.O_CLOEXEC)
    if not req.valid():  # the fd is the caller's, not a reused pid's
        with contextlib.suppress(OSError):
            os.close(fd)
        raise ProcessLookupError(req.pid)
    return fd




def _status(path: str, dir_fd: int) -> dict[str, str]:
    with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd), encoding="ascii",
              errors="replace") as f:
        return {k: v.strip() for k, _, v in (ln.partition(":") for ln in f)}


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _own_number(req: Request, procfd: int) -> str:
    """The caller's tgid as its procfs numbers it (FileNotFoundError: it has none)."""
    level = _ns_level(req.pid, procfd)
    _tgid, nstgid, _nspid = _status_ids(req.pid)
    if level is None or level >= len(nstgid):
        raise FileNotFoundError(errno.ENOENT, "the caller is not in its /proc's namespace")
    return str(nstgid[-1 - level])


def _other_object(req: Request, ref: ProcRef, procfd: int) -> int:
    """The fd/cwd/root/exe of the process the caller's procfs numbers `ref.pid`, when the
    caller could reach it itself; PermissionError (EACCES) when it could not."""
    # "self" in the daemon's walk would be the daemon (in no pid namespace of the
    # procfs): the caller's own number there is its NStgid at the procfs's level
    proc = str(ref.pid) if ref.who == "pid" else _own_number(req, procfd)
    where = proc if ref.tid is None else f"{proc}/task/{ref.tid}"
    try:
        pdir = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=procfd)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no process {where} in the caller's /proc") \
            from None
    try:
        # The directory pins that process: a reused number opens nothing through it.
        if not (ns_within("ns/pid", _ns_id(f"/proc/{req.pid}/ns/pid"), dir_fd=pdir)
                and ns_within("ns/user", _ns_id(f"/proc/{req.pid}/ns/user"), dir_fd=pdir)):
            raise PermissionError(errno.EACCES, f"process {ref.pid} is outside the caller's "
                                                "pid or user namespace")
        mine = _status(f"/proc/{req.pid}/status", procfd)
        theirs = _status("status", pdir)
        ptrace = int(mine.get("CapEff", "0"), 16) >> CAP_SYS_PTRACE & 1
        if not ptrace and (len(set(mine.get("Uid", "").split())) != 1
                           or mine.get("Uid") != theirs.get("Uid")
                           or mine.get("Gid") != theirs.get("Gid")):
            raise PermissionError(errno.EACCES, f"process {ref.pid} is not the caller's to "
                                                "inspect (no CAP_SYS_PTRACE, other ids)")
        name = f"fd/{ref.fd}" if ref.what == "fd" else ref.what
        # O_PATH follows the magic link to the object itself, as the kernel's walk would
        return os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=pdir)
    finally:
        os.close(pdir)
