"""The namespace executor against real user, mount and pid namespaces."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from interceptd import core
from interceptd.kernel.consts import CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER
from tests.integration import test_core_support as sup

NS = CLONE_NEWUSER | CLONE_NEWNS
FSCONFIG_CMD_CREATE = 6
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100


def mountpoints(pid: int) -> dict[str, str]:
    """Mount point -> fs type, as `pid` sees them (relative to its root)."""
    out = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            out[left.split()[4]] = right.split()[0]
    return out


def start_in_ns(*argv: str, pid_ns: bool = False) -> subprocess.Popen[bytes]:
    flags = ["--user", "--map-root-user", "--mount"]
    if pid_ns:
        flags += ["--pid", "--fork"]
    return subprocess.Popen(["unshare", *flags, *argv])


def wait_until(pred, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        time.sleep(0.01)


def test_tmpfs_mount_lands_in_the_targets_namespace(
        chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, root = chroot_target
    before = sup.open_fds()
    r = core.ns_exec(pidfd, pid, NS, "mount", "tmpfs", "/mnt", "tmpfs", 0, "size=1m")
    assert (r.ret, r.errno, r.fd) == (0, 0, -1)
    assert mountpoints(pid)["/mnt"] == "tmpfs"  # beneath its root, as it sees it
    # Relative paths resolve from the target's cwd.
    r = core.ns_exec(pidfd, pid, NS, "mount", "tmpfs", "rel", "tmpfs", 0, None)
    assert (r.ret, r.errno) == (0, 0)
    assert mountpoints(pid)["/work/rel"] == "tmpfs"
    mine = mountpoints(os.getpid())
    assert str(root / "mnt") not in mine and str(root / "work/rel") not in mine
    r = core.ns_exec(pidfd, pid, NS, "umount2", "/mnt", 0)
    assert (r.ret, r.errno) == (0, 0)
    assert "/mnt" not in mountpoints(pid)
    r = core.ns_exec(pidfd, pid, NS, "umount2", "/mnt", 0)
    assert (r.ret, r.errno) == (-1, errno.EINVAL)  # not a mount point any more
    assert sup.open_fds() == before
    assert sup.zombies_of(os.getpid()) == []


def test_fd_making_ops_pass_the_fd_back(chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, root = chroot_target
    r = core.ns_exec(pidfd, pid, NS, "fsopen", "tmpfs", 0)
    assert r.errno == 0 and r.fd >= 0
    fsfd = r.fd
    try:
        r = core.ns_exec(pidfd, pid, NS, "fsconfig", fsfd, FSCONFIG_CMD_CREATE, None, None, 0)
        assert (r.ret, r.errno) == (0, 0)
        r = core.ns_exec(pidfd, pid, NS, "fsmount", fsfd, 0, 0)
        assert r.errno == 0 and r.fd >= 0
        mfd = r.fd
        try:
            r = core.ns_exec(pidfd, pid, NS, "move_mount", mfd, "", AT_FDCWD, "/mnt2",
                             MOVE_MOUNT_F_EMPTY_PATH)
            assert (r.ret, r.errno) == (0, 0)
        finally:
            os.close(mfd)
    finally:
        os.close(fsfd)
    assert mountpoints(pid)["/mnt2"] == "tmpfs"
    r = core.ns_exec(pidfd, pid, NS, "open_tree", AT_FDCWD, "/mnt2", 0)
    assert r.errno == 0 and r.fd >= 0
    assert os.readlink(f"/proc/self/fd/{r.fd}") == str(root / "mnt2")  # seen from here
    os.close(r.fd)


def test_proc_mount_sees_the_targets_pid_namespace(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    p = start_in_ns("sleep", "1000", pid_ns=True)
    sleeper = 0
    try:
        children = Path(f"/proc/{p.pid}/task/{p.pid}/children")
        wait_until(lambda: children.read_text().strip() != "")
        sleeper = int(children.read_text().split()[0])
        pidfd = os.pidfd_open(sleeper)
        try:
            r = core.ns_exec(pidfd, sleeper, NS | CLONE_NEWPID, "mount", "proc", str(d),
                             "proc", 0, None)
            assert (r.ret, r.errno) == (0, 0)
            seen = Path(f"/proc/{sleeper}/root{d}")
            pids = sorted(int(x) for x in os.listdir(seen) if x.isdigit())
            assert pids[0] == 1
            assert (seen / "1" / "cmdline").read_bytes().split(b"\0")[0] == b"sleep"
        finally:
            os.close(pidfd)
    finally:
        # unshare --fork's child first: killing unshare alone leaves it running.
        if sleeper:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sleeper, signal.SIGKILL)
        p.kill()
        p.wait()
    assert sup.zombies_of(os.getpid()) == []


def test_dead_target_is_refused_with_esrch() -> None:
    p = start_in_ns("true")
    pidfd = os.pidfd_open(p.pid)
    try:
        p.wait()
        r = core.ns_exec(pidfd, p.pid, NS, "mount", "tmpfs", "/mnt", "tmpfs", 0, None)
        assert (r.ret, r.errno, r.fd) == (-1, errno.ESRCH, -1)
    finally:
        os.close(pidfd)


def test_pid_and_pidfd_must_match(chroot_target: tuple[int, int, Path]) -> None:
    pid, _pidfd, _root = chroot_target
    other = subprocess.Popen(["sleep", "1000"])
    ofd = os.pidfd_open(other.pid)
    try:
        r = core.ns_exec(ofd, pid, NS, "mount", "tmpfs", "/mnt", "tmpfs", 0, None)
        assert r.errno == errno.ESRCH
        assert "/mnt" not in mountpoints(pid)
    finally:
        os.close(ofd)
        other.kill()
        other.wait()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        core.ns_exec(0, 1, NS, "pivot_root", "a", "b")
    with pytest.raises(TypeError):
        core.ns_exec(0, 1, NS, "umount2", "/x")
    with pytest.raises(ValueError):
        core.ns_exec(0, 1, NS, "umount2", "/x\0y", 0)
