"""kernel.mounttable.TableCache on real mount namespaces (root, no container): a table is read
once and handed out until its namespace changes, whoever changes it; a root that is not a
mount's root is never cached; what it hands out always equals a fresh read."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from interceptd.kernel.consts import CLONE_NEWNS
from interceptd.kernel.mounttable import MountTable, TableCache, _seen_from

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare")


@contextmanager
def mount_namespace() -> Iterator[int]:
    """A process in a private mount namespace of its own; yields its pid."""
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          "echo ready; exec sleep 60"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield p.pid
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)


def in_ns(pid: int, *cmd: str) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-m", *cmd], check=True)


def ids(t: MountTable) -> set[int]:
    return {e.mount_id for e in t.entries}


def test_read_once_then_reread_after_any_change() -> None:
    cache = TableCache()
    with mount_namespace() as pid, tempfile.TemporaryDirectory() as d:
        first = cache.get(pid)
        assert cache.get(pid) is first and cache.reads == 1 and len(cache) == 1
        # A mount the daemon never saw (made directly in the namespace) flags the fd.
        in_ns(pid, "mount", "-t", "tmpfs", "fair", d)
        second = cache.get(pid)
        assert cache.reads == 2 and ids(second) == ids(MountTable.read(pid))
        assert any(e.mountpoint == d for e in second.entries)
        in_ns(pid, "mount", "-o", "remount,ro", d)  # an attribute change, too
        third = cache.get(pid)
        assert cache.reads == 3 and next(e for e in third.entries if e.mountpoint == d).readonly
        in_ns(pid, "umount", d)
        assert not any(e.mountpoint == d for e in cache.get(pid).entries)
        assert cache.reads == 4
        assert cache.get(pid) is cache.get(pid) and cache.reads == 4
    cache.close()


def test_invalidate_forces_a_read() -> None:
    cache = TableCache()
    with mount_namespace() as pid:
        cache.get(pid)
        cache.invalidate()
        cache.get(pid)
        assert cache.reads == 2
    cache.close()


def test_one_table_per_namespace_bounded() -> None:
    cache = TableCache()
    cache.MAX_TABLES = 2
    with mount_namespace() as a, mount_namespace() as b, mount_namespace() as c:
        ta, tb = cache.get(a), cache.get(b)
        assert ids(ta) != ids(tb) and ids(ta) == ids(MountTable.read(a))
        cache.get(c)
        assert len(cache) == 2
        cache.get(a)  # evicted: read again
        assert cache.reads == 4
    cache.close()


def test_a_chrooted_caller_is_never_served_from_the_cache() -> None:
    cache = TableCache()
    with mount_namespace() as pid, tempfile.TemporaryDirectory() as d:
        ready_r, ready_w = os.pipe()
        done_r, done_w = os.pipe()
        child = os.fork()
        if child == 0:  # join the namespace, chroot into a plain directory, wait
            try:
                os.close(ready_r)
                fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNS) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                os.chroot(d)
                os.write(ready_w, b"x")
                os.read(done_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        try:
            assert os.read(ready_r, 1) == b"x", "the child could not chroot"
            cache.get(pid)  # the namespace root's view: cached
            t = cache.get(child)
            assert len(cache) == 1 and cache.reads == 1  # not read into the cache
            assert ids(t) == ids(MountTable.read(child))
        finally:
            os.write(done_w, b"x")
            os.waitpid(child, 0)
            for f in (ready_r, done_r, done_w):
                os.close(f)
    cache.close()


def test_a_table_from_another_root_is_recognised() -> None:
    host = MountTable.read(os.getpid())
    root = next(e for e in host.entries if e.mountpoint == "/")
    assert _seen_from(host, root.mount_id)
    other = next(e for e in host.entries if e.mountpoint != "/")
    assert not _seen_from(host, other.mount_id)
    assert not _seen_from(host, 999999)
