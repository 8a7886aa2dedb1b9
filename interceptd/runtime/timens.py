"""The container's time namespace: made for create/run, joined by every later command.

The runtime (runc 1.1.5 has no time namespace; crun 1.8.1's fails to start a
container) is run in a time namespace of the container's own: the process that execs
it unshares one and writes its offsets first, so runc/crun, runc init and the
container inherit it. Its boot and monotonic clocks start near 0 at create, so the
kernel's /proc/uptime, sysinfo(2), /proc/stat's btime and the start times in
/proc/<pid>/stat all count from the container's creation, and the daemon's emulated
files take the same origin from the init's /proc/<pid>/timens_offsets
(emulation/snapshot.py `start_of`). The namespace belongs to the host's user namespace,
so the container can neither change its offsets nor leave it.

runc and crun both tell a live init from a reused pid by its start time
(/proc/<pid>/stat field 22), which the kernel shows relative to the *reader's* time
namespace, and they record it at create, from inside the new namespace. So every later
runtime command on that container (start, state, kill, exec, delete, ...) must read it
from the same namespace: the namespace is pinned at create (a bind mount of
/proc/self/ns/time_for_children at `pin_path`, in the shim's 0700 state directory,
which a container's init can neither reach nor move away from), and the launcher
(launcher.c, the same in C) or `enter` joins the pin before it execs the runtime for a
command naming that container. The pin goes at delete. The runtime run directly, not
through interceptd-runc, reads the start time in the host's namespace and reports such
a container `stopped`.

A job names what to do as a word (the service's OK line, launcher.c):
"new:<pin path>" or "join:<pin path>".
docs/emulation.md "Time".
"""

from __future__ import annotations

import ctypes
import errno
import os
import time

from interceptd.kernel import mountapi
from interceptd.kernel.consts import CLONE_NEWTIME

from . import records
from . import settings as settingsmod
from .errors import Fail

NEW = "new:"
JOIN = "join:"
OFFSETS = "/proc/self/timens_offsets"


def available() -> bool:
    """The kernel has time namespaces (CONFIG_TIME_NS, Linux 5.6)."""
    return os.path.exists("/proc/self/ns/time")


def pin_path(st: settingsmod.Settings, root: str | None, cid: str) -> str:
    """Where the namespace of container `cid` (runtime --root `root`) is pinned."""
    return os.path.join(st.runtime_dir, "timens", records.container_key(root, cid))


def for_create(st: settingsmod.Settings, root: str | None, cid: str) -> str | None:
    return NEW + pin_path(st, root, cid) if available() else None


def for_command(st: settingsmod.Settings, root: str | None, cid: str | None) -> str | None:
    """A command on an existing container: join its pinned namespace, if it has one."""
    if not cid or not available():
        return None
    path = pin_path(st, root, cid)
    return JOIN + path if os.path.exists(path) else None


def unpin(st: settingsmod.Settings, root: str | None, cid: str) -> list[str]:
    """Drop the pin of a deleted container (problems, never raises)."""
    path = pin_path(st, root, cid)
    try:
        mountapi.umount(path, mountapi.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            return [f"time namespace pin {path}: {e.strerror}"]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        return [f"time namespace pin {path}: {e.strerror}"]
    return []


def _libc() -> ctypes.CDLL:
    from interceptd.kernel.libc import libc

    return libc


def _warn(msg: str) -> None:
    os.write(2, f"interceptd-runc: warning: {msg}\n".encode())


def _pin(path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    mountapi.detach_all(path)  # whatever a killed create of the same id left there
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
    try:
        fd = mountapi.open_tree("/proc/self/ns/time_for_children")
        try:
            mountapi.move_mount(fd, path)
        finally:
            os.close(fd)
    except OSError:
        os.unlink(path)  # a plain file there would fail every later join
        raise


def _new(path: str) -> None:
    libc = _libc()
    own = os.open("/proc/self/ns/time", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWTIME) != 0:
            e = ctypes.get_errno()
            if e != errno.EINVAL:  # EINVAL: no CONFIG_TIME_NS, the host's clocks as before
                _warn(f"no time namespace: unshare: {os.strerror(e)}")
            return
        try:
            mono = int(time.clock_gettime(time.CLOCK_MONOTONIC))
            boot = int(time.clock_gettime(time.CLOCK_BOOTTIME))
            fd = os.open(OFFSETS, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, f"monotonic -{mono} 0\nboottime -{boot} 0\n".encode())
            finally:
                os.close(fd)
            _pin(path)
        except OSError as e:
            # Back to our own namespace for the runtime's children: a namespace later
            # commands could not find would make the runtime lose the container.
            _warn(f"no time namespace: {e.strerror}")
            if libc.setns(own, CLONE_NEWTIME) != 0:
                raise Fail("cannot return to the host's time namespace: "
                           f"{os.strerror(ctypes.get_errno())}") from None
    finally:
        os.close(own)


def _join(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return  # deleted meanwhile: the runtime reports it
    except OSError as e:
        raise Fail(f"cannot join the container's time namespace: {e.strerror}") from None
    try:
        theirs, ours = os.fstat(fd), os.stat("/proc/self/ns/time")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino) and \
                _libc().setns(fd, CLONE_NEWTIME) != 0:
            raise Fail("cannot join the container's time namespace: "
                       f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def enter(spec: str) -> None:
    """Make or join the time namespace `spec` names, in a single-threaded process about
    to exec the runtime (setns(CLONE_NEWTIME) refuses any other)."""
    if spec.startswith(NEW):
        _new(spec[len(NEW):])
    elif spec.startswith(JOIN):
        _join(spec[len(JOIN):])
    else:
        raise Fail(f"bad time namespace {spec!r}")
