"""The persistent namespace executor (core.Executor) against real user and mount
namespaces: one helper serves many requests, each as the requesting process sees
the world (its root and cwd), and nothing leaks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from interceptd import core
from tests.integration import test_core_support as sup
from tests.integration.test_core_nsexec import mountpoints, start_in_ns, wait_until

AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 4


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
            out += [int(x) for x in f.read().split()]
    return out


def test_one_helper_serves_many_requests_beneath_the_targets_root(
        chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, root = chroot_target
    x = core.Executor(pidfd, pid)
    try:
        helper = x.helper_pid
        assert x.mnt_ns == (os.stat(f"/proc/{pid}/ns/mnt").st_dev,
                            os.stat(f"/proc/{pid}/ns/mnt").st_ino)
        for _ in range(3):
            r = x.run(pidfd, pid, "mount", "tmpfs", "/mnt", "tmpfs", 0, "size=1m")
            assert (r.ret, r.errno, r.fd) == (0, 0, -1)
            assert mountpoints(pid)["/mnt"] == "tmpfs"  # beneath its root, as it sees it
            assert str(root / "mnt") not in mountpoints(os.getpid())
            r = x.run(pidfd, pid, "umount2", "/mnt", 0)
            assert (r.ret, r.errno) == (0, 0)
        # Relative paths resolve from the target's cwd (/work), per request.
        r = x.run(pidfd, pid, "mount", "tmpfs", "rel", "tmpfs", 0, None)
        assert (r.ret, r.errno) == (0, 0)
        assert mountpoints(pid)["/work/rel"] == "tmpfs"
        r = x.run(pidfd, pid, "umount2", "rel", 0)
        assert (r.ret, r.errno) == (0, 0)
        r = x.run(pidfd, pid, "umount2", "/mnt", 0)
        assert (r.ret, r.errno) == (-1, errno.EINVAL)  # not a mount point any more
        assert x.helper_pid == helper and x.restarts == 0
    finally:
        x.close()
    assert sup.zombies_of(os.getpid()) == []


def test_fds_travel_both_ways(chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, root = chroot_target
    x = core.Executor(pidfd, pid)
    try:
        r = x.run(pidfd, pid, "fsopen", "tmpfs", 0)
        assert r.errno == 0 and r.fd >= 0
        fsfd = r.fd
        try:
            r = x.run(pidfd, pid, "fsconfig", fsfd, 6, None, None, 0)  # CMD_CREATE
            assert (r.ret, r.errno) == (0, 0)
            r = x.run(pidfd, pid, "fsmount", fsfd, 0, 0)
            assert r.errno == 0 and r.fd >= 0
            mfd = r.fd
            try:
                r = x.run(pidfd, pid, "move_mount", mfd, "", AT_FDCWD, "/mnt2",
                          MOVE_MOUNT_F_EMPTY_PATH)
                assert (r.ret, r.errno) == (0, 0)
            finally:
                os.close(mfd)
        finally:
            os.close(fsfd)
        assert mountpoints(pid)["/mnt2"] == "tmpfs"
        r = x.run(pidfd, pid, "open_tree", AT_FDCWD, "/mnt2", 0)
        assert r.errno == 0 and r.fd >= 0
        assert os.readlink(f"/proc/self/fd/{r.fd}") == str(root / "mnt2")
        mnt_id = core.fd_mnt_id(r.fd)
        os.close(r.fd)
        # umount2_checked: only the mount that was checked.
        r = x.run(pidfd, pid, "umount2_checked", "/mnt2", 0, mnt_id + 100000)
        assert (r.ret, r.errno) == (-1, errno.ESTALE)
        assert mountpoints(pid)["/mnt2"] == "tmpfs"
        r = x.run(pidfd, pid, "umount2_checked", "/mnt2", 0, mnt_id)
        assert (r.ret, r.errno) == (0, 0)
        assert "/mnt2" not in mountpoints(pid)
    finally:
        x.close()


def test_a_process_in_other_namespaces_is_refused(
        chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, _root = chroot_target
    other = start_in_ns("sleep", "1000")
    ofd = os.pidfd_open(other.pid)
    x = core.Executor(pidfd, pid)
    try:
        wait_until(lambda: os.stat(f"/proc/{other.pid}/ns/mnt").st_ino != x.mnt_ns[1])
        with pytest.raises(core.WrongNamespaces):
            x.run(ofd, other.pid, "mount", "tmpfs", "/mnt", "tmpfs", 0, None)
        # A pidfd of another process than `pid`: ESRCH, nothing done.
        r = x.run(ofd, pid, "mount", "tmpfs", "/mnt", "tmpfs", 0, None)
        assert r.errno == errno.ESRCH
        assert "/mnt" not in mountpoints(pid)
        r = x.run(pidfd, pid, "umount2", "/nonexistent", 0)  # still in step
        assert r.errno == errno.ENOENT
    finally:
        x.close()
        os.close(ofd)
        other.kill()
        other.wait()


def test_dead_target_gets_esrch_and_dead_helper_is_restarted_once(
        chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, _root = chroot_target
    x = core.Executor(pidfd, pid)
    try:
        first = x.helper_pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: state(first) == "Z")
        r = x.run(pidfd, pid, "umount2", "/nonexistent", 0)
        assert r.errno == errno.ENOENT
        assert x.restarts == 1 and x.helper_pid != first
        assert first not in children_of(os.getpid())  # the dead one was reaped
        # A requester that is gone: ESRCH, and the helper stays in step.
        t = start_in_ns("true")
        tfd = os.pidfd_open(t.pid)
        try:
            t.wait()
            r = x.run(tfd, t.pid, "umount2", "/x", 0)
            assert (r.ret, r.errno) == (-1, errno.ESRCH)
        finally:
            os.close(tfd)
        # The process it was started from dies: others of its namespaces still use it.
        r = x.run(pidfd, pid, "umount2", "/nonexistent", 0)
        assert r.errno == errno.ENOENT
    finally:
        x.close()
    # Started from a process that died meanwhile: ESRCH.
    t = start_in_ns("sleep", "1000")
    tfd = os.pidfd_open(t.pid)
    try:
        wait_until(lambda: os.stat(f"/proc/{t.pid}/ns/mnt").st_ino
                   != os.stat("/proc/self/ns/mnt").st_ino)
        y = core.Executor(tfd, t.pid)
        try:
            t.kill()
            t.wait()
            r = y.run(tfd, t.pid, "umount2", "/x", 0)
            assert (r.ret, r.errno) == (-1, errno.ESRCH)
        finally:
            y.close()
        with pytest.raises(OSError) as ei:
            core.Executor(tfd, t.pid)
        assert ei.value.errno == errno.ESRCH
    finally:
        os.close(tfd)
    assert sup.zombies_of(os.getpid()) == []


def test_close_reaps_and_later_calls_fail(chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, _root = chroot_target
    x = core.Executor(pidfd, pid)
    helper = x.helper_pid
    assert helper in children_of(os.getpid())
    x.close()
    x.close()
    assert helper not in children_of(os.getpid())
    with pytest.raises(core.ExecutorDied):
        x.run(pidfd, pid, "umount2", "/x", 0)


def test_no_fd_or_child_leaks_after_many_cycles(
        chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, _root = chroot_target
    fds = sup.open_fds()
    kids = children_of(os.getpid())
    for _ in range(20):
        x = core.Executor(pidfd, pid)
        for _ in range(25):
            r = x.run(pidfd, pid, "mount", "tmpfs", "/mnt", "tmpfs", 0, None)
            assert r.errno == 0
            r = x.run(pidfd, pid, "open_tree", AT_FDCWD, "/mnt", 0)
            assert r.errno == 0
            os.close(r.fd)
            r = x.run(pidfd, pid, "umount2", "/mnt", 0)
            assert r.errno == 0
        os.kill(x.helper_pid, signal.SIGKILL)  # half of them die before close
        x.close()
    assert sup.open_fds() == fds
    assert children_of(os.getpid()) == kids
    assert sup.zombies_of(os.getpid()) == []
    assert "/mnt" not in mountpoints(pid)


def test_helper_ends_when_its_socket_closes(chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, _root = chroot_target
    x = core.Executor(pidfd, pid)
    helper = x.helper_pid
    os.close(x._x.sock)  # as if the daemon's end went away
    wait_until(lambda: state(helper) == "Z")
    x._x.sock = -1
    x.close()
    assert helper not in children_of(os.getpid())


def test_helper_is_not_reachable_from_the_target(
        chroot_target: tuple[int, int, Path]) -> None:
    pid, pidfd, _root = chroot_target
    x = core.Executor(pidfd, pid)
    try:
        h = x.helper_pid
        with open(f"/proc/{h}/status", encoding="ascii") as f:
            status = f.read()
        assert f"\nNSpid:\t{h}\n" in status  # not in any pid namespace of the target
        # Its fds: stdio, the socket and its base root; nothing of the daemon's.
        fds = {int(n): os.readlink(f"/proc/{h}/fd/{n}") for n in os.listdir(f"/proc/{h}/fd")}
        extra = {n: t for n, t in fds.items() if n > 2}
        assert len(extra) == 2, fds
        assert sum(t.startswith("socket:") for t in extra.values()) == 1, fds
        with open(f"/proc/{h}/status", encoding="ascii") as f:
            assert "\nUid:\t" in f.read()
        r = subprocess.run(["nsenter", "-t", str(pid), "-U", "-m", "--preserve-credentials",
                            "cat", f"/proc/{h}/environ"], capture_output=True)
        assert r.returncode != 0
    finally:
        x.close()


def test_mount_facts_agree_with_mountinfo(chroot_target: tuple[int, int, Path]) -> None:
    from interceptd.kernel.mounttable import MountTable

    pid, pidfd, _root = chroot_target
    x = core.Executor(pidfd, pid)
    try:
        r = x.run(pidfd, pid, "mount", "tmpfs", "/mnt", "tmpfs", 0x2 | 0x8, None)
        assert r.errno == 0
        r = x.run(pidfd, pid, "open_tree", AT_FDCWD, "/mnt", 0)
        assert r.errno == 0
        fd = r.fd
        try:
            facts = core.fd_mount_facts(fd, pid)
            table = MountTable.read(pid)
            e = table.get(core.fd_mnt_id(fd))
            assert e is not None and len(facts) == 2
            f, parent = facts
            assert (f.mnt_id, f.parent_id, f.dev, f.root, f.fstype) == (
                e.mount_id, e.parent_id, e.dev, e.root, e.fstype)
            assert f.attr & 0xF == 0x2 | 0x8  # nosuid, noexec
            # The parent sits outside the target's chroot: its mountinfo omits it,
            # statmount still names it.
            assert table.get(e.parent_id) is None and parent.mnt_id == e.parent_id
            assert parent.uid == f.parent_uid and f.uid == core.fd_mount_uid(fd)
        finally:
            os.close(fd)
        r = x.run(pidfd, pid, "umount2", "/mnt", 0)
        assert r.errno == 0
    finally:
        x.close()
