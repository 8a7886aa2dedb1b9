"""The daemon's emulation bookkeeping (interceptd/emulation/daemon.py) with a stand-in
FUSE service: registration per container, renders, release, sysinfo's loads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from interceptd.emulation import registry
from interceptd.emulation.daemon import Emulation, emulated_files, tree_path
from interceptd.handlers import sysinfo


@dataclass
class FakeService:
    registered: dict[int, int] = field(default_factory=dict)
    unregistered: list[int] = field(default_factory=list)
    started: bool = False
    stopped: bool = False
    refreshed: list[tuple[int, str]] = field(default_factory=list)
    # The tree's st_dev: no mount of the fake init's carries it (nothing bound yet).
    server: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(dev=0))

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def register_nsfd(self, key: int, fd: int) -> None:
        os.fstat(fd)  # a live fd
        self.registered[key] = fd

    def unregister(self, key: int) -> None:
        self.unregistered.append(key)

    def refresh(self, key: int, path: str) -> None:
        self.refreshed.append((key, path))


@dataclass
class FakeContainer:
    cookie: int
    init_pid: int
    id: str = "c1"
    pidfd: int = -1
    bundle: str = ""
    notify_fds: list[int] = field(default_factory=list)
    channel: None = None
    policy: None = None


@pytest.fixture
def em(tmp_path):
    e = Emulation(str(tmp_path), service=FakeService())  # type: ignore[arg-type]
    e.start()
    yield e
    e.stop()
    assert sysinfo.loads_provider is None


def test_files_are_the_registry_s() -> None:
    assert [f.path for f in emulated_files()] == [tree_path(p) for p in registry.FILES]
    assert tree_path("/proc/meminfo") == "proc/meminfo"


def test_attach_render_release(em) -> None:
    c = FakeContainer(7, os.getpid(), pidfd=os.pidfd_open(os.getpid()))
    try:
        em.attach(c)
        em.attach(c)  # once
        assert list(em.service.registered) == [7] and len(em) == 1
        assert sysinfo.loads_provider == em.loads_of
        mem = em.render(7, "proc/meminfo")
        assert mem.startswith(b"MemTotal:")
        assert em.render(7, "proc/loadavg").count(b" ") == 4
        assert em.render(7, "sys/class/dmi/id/product_uuid") == \
            registry.render("/sys/class/dmi/id/product_uuid",
                            registry.RenderInput(snap=None, host=None, now=0.0,  # type: ignore[arg-type]
                                                 container_id="c1"))
        loads = em.loads_of(os.getpid())
        assert loads is not None and len(loads) == 3
        assert em.loads_of(1 << 22) is None
        fd = em.service.registered[7]
        em.release(c)
        em.release(c)
        assert em.service.unregistered == [7] and len(em) == 0
        with pytest.raises(OSError):
            os.fstat(fd)  # the namespace fd went with it
        with pytest.raises(LookupError):
            em.render(7, "proc/meminfo")
    finally:
        os.close(c.pidfd)


def test_dead_init_is_not_registered(em) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pidfd = os.pidfd_open(pid)
    os.waitpid(pid, 0)
    try:
        with pytest.raises((ProcessLookupError, FileNotFoundError)):
            em.attach(FakeContainer(9, pid, pidfd=pidfd))
        assert em.service.registered == {} and len(em) == 0
    finally:
        os.close(pidfd)


def test_status(em, tmp_path) -> None:
    assert em.status() == {"fs": str(tmp_path / "fs"), "files": list(registry.FILES)}


def test_shared_pid_namespace_is_handed_over(em) -> None:
    """Two containers in one pid namespace (--pid=container:X): registered once; when
    the first goes, the second takes the namespace over; when both go, it is gone."""
    pidfd = os.pidfd_open(os.getpid())
    try:
        a = FakeContainer(1, os.getpid(), id="a", pidfd=pidfd)
        b = FakeContainer(2, os.getpid(), id="b", pidfd=pidfd)
        em.attach(a)
        em.attach(b)
        assert list(em.service.registered) == [1] and len(em) == 2
        em.release(a)
        assert em.service.unregistered == [1]
        assert list(em.service.registered) == [1, 2]
        assert em.render(2, "proc/meminfo").startswith(b"MemTotal:")
        em.release(b)
        assert em.service.unregistered == [1, 2] and len(em) == 0
        c = FakeContainer(3, os.getpid(), id="c", pidfd=pidfd)
        em.attach(c)  # a sharer released first leaves the owner registered
        d = FakeContainer(4, os.getpid(), id="d", pidfd=pidfd)
        em.attach(d)
        em.release(d)
        assert em.service.unregistered == [1, 2]
        em.release(c)
        assert em.service.unregistered == [1, 2, 3]
    finally:
        os.close(pidfd)


def test_sysctl_writes_decided_and_performed(em, tmp_path) -> None:
    """Only the container's root writes; a container-only value is its own; the max
    rule raises the (here: stand-in) host file and never lowers it; refusals are -errno."""
    import errno

    proc = tmp_path / "proc"
    (proc / "sys/fs").mkdir(parents=True)
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/fs/file-max").write_text("1000\n")
    (proc / "sys/kernel/panic").write_text("0\n")
    em.proc = str(proc)
    c = FakeContainer(9, os.getpid(), pidfd=os.pidfd_open(os.getpid()))
    try:
        em.attach(c)
        root = em._sources[9].root_uid
        assert root == 0  # this test's own user namespace maps 0 to 0
        assert em.write(9, "proc/sys/kernel/panic", b"5\n", 1000, 1) == -errno.EACCES
        assert em.write(9, "proc/sys/kernel/panic", b"5\n", root, 1) == 2
        assert em.render(9, "proc/sys/kernel/panic") == b"5\n"
        assert (proc / "sys/kernel/panic").read_text() == "0\n"  # the host's kept
        assert em.write(9, "proc/sys/kernel/panic", b"x\n", root, 1) == -errno.EINVAL
        assert em.write(9, "proc/sys/fs/file-max", b"2000\n", root, 1) == 5
        assert (proc / "sys/fs/file-max").read_text() == "2000\n"
        assert em.write(9, "proc/sys/fs/file-max", b"10\n", root, 1) == 3
        assert (proc / "sys/fs/file-max").read_text() == "2000\n"  # never lowered
        assert em.render(9, "proc/sys/fs/file-max") == b"10\n"  # its own view
        # This test shares the host's UTS namespace: shown, never written.
        assert em.render(9, "proc/sys/kernel/hostname") == \
            f"{os.uname().nodename}\n".encode()
        assert em.write(9, "proc/sys/kernel/hostname", b"x\n", root, 1) == -errno.EACCES
        assert em.write(9, "proc/meminfo", b"1\n", root, 1) == -errno.EIO
        assert em.write(8, "proc/sys/kernel/panic", b"1\n", root, 1) == -errno.EIO
        assert any(p == "proc/sys/kernel/panic" for _, p in em.service.refreshed)
    finally:
        em.release(c)
        os.close(c.pidfd)


def test_root_uid_of_a_uid_map() -> None:
    from interceptd.emulation.daemon import root_uid

    assert root_uid("         0     100000      65536\n") == 100000
    assert root_uid("      1000       1000          1\n") is None
    assert root_uid("") is None
