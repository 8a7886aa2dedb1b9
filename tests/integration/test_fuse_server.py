"""The emulated files' FUSE server (csrc/fusefs.c) on a real FUSE mount: readers in
"containers" (processes in their own pid namespaces, `unshare --pid --fork`) get
their container's bytes, rendered by a stub renderer; the failure answers, the
staleness bounds, interrupts and the mount's end."""

from __future__ import annotations

import errno
import hashlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interceptd import core
from interceptd.emulation.fuseserver import EmulatedFile, FuseService, fs_dir

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

MEMINFO = """\
MemTotal:         262144 kB
MemFree:          200000 kB
MemAvailable:     220000 kB
Buffers:               0 kB
Cached:            10000 kB
SwapCached:            0 kB
Shmem:               100 kB
SReclaimable:       1000 kB
SwapTotal:             0 kB
SwapFree:              0 kB
"""


def wait_until(pred: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


class NsShell:
    """A shell in a new pid namespace (a stand-in container) running commands
    sent on its stdin; `pid` is the shell's host pid (in the namespace)."""

    def __init__(self, *unshare_args: str) -> None:
        script = 'while read -r c; do eval "$c" 2>&1; echo "__rc=$?"; done'
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", *unshare_args, "sh", "-c", script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        kids = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        wait_until(lambda: Path(kids).read_text().strip())
        self.pid = int(Path(kids).read_text().split()[0])
        wait_until(lambda: os.stat(f"/proc/{self.pid}/ns/pid").st_ino
                   != os.stat("/proc/self/ns/pid").st_ino)
        self._buf = b""

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")

    def result(self, timeout: float = 10.0) -> tuple[int, str]:
        """(exit status, output) of the command sent last."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"__rc=" not in self._buf or not self._buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError(f"no answer in {timeout}s: {self._buf!r}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError(self._buf)
            self._buf += chunk
        out, _, rest = self._buf.partition(b"__rc=")
        rc, _, self._buf = rest.partition(b"\n")
        return int(rc), out.decode(errors="replace")

    def run(self, cmd: str, timeout: float = 10.0) -> tuple[int, str]:
        self.send(cmd)
        return self.result(timeout)

    def children(self) -> list[int]:
        return [int(p) for p in
                Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def shells() -> Iterator[Callable[..., NsShell]]:
    made: list[NsShell] = []

    def make(*args: str) -> NsShell:
        made.append(NsShell(*args))
        return made[-1]

    yield make
    for s in made:
        s.close()


class StubRenderer:
    """Renders "<path> of <key> v<n>" (n counts renders of that pair); meminfo as
    a real-looking file; "proc/broken" raises; "proc/big" is 300 KB (several
    READs of one open)."""

    def __init__(self) -> None:
        self.count: dict[tuple[int, str], int] = {}
        self.lock = threading.Lock()

    def __call__(self, key: int, path: str) -> bytes:
        with self.lock:
            n = self.count[key, path] = self.count.get((key, path), 0) + 1
        if path == "proc/broken":
            raise RuntimeError("stub render failure")
        if path == "proc/meminfo":
            return MEMINFO.encode()
        if path == "proc/big":
            return big_bytes(key)
        return f"{path} of {key} v{n}\n".encode()


def big_bytes(key: int) -> bytes:
    return b"".join(b"%d line %06d of a big file\n" % (key, i) for i in range(10000))


FILES = [
    EmulatedFile("proc/meminfo"),
    EmulatedFile("proc/uptime", fresh=0.2, max_stale=30.0),
    EmulatedFile("proc/loadavg", fresh=0.1, max_stale=0.3),
    EmulatedFile("proc/broken"),
    EmulatedFile("proc/big"),
    EmulatedFile("sys/devices/system/cpu/online"),
]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[FuseService, StubRenderer, Path]]:
    render = StubRenderer()
    svc = FuseService(fs_dir(str(tmp_path / "state")), FILES, render, wait_timeout=2.0)
    svc.start()
    yield svc, render, Path(svc.mountpoint)
    svc.stop()
    assert not mounted(Path(svc.mountpoint))


def test_containers_read_their_own_bytes(service, shells) -> None:
    svc, _, mnt = service
    a, b = shells(), shells()
    svc.register(1, a.pid)
    svc.register(2, b.pid)
    assert a.run(f"cat {mnt}/sys/devices/system/cpu/online") == (
        0, "sys/devices/system/cpu/online of 1 v1\n")
    assert b.run(f"cat {mnt}/sys/devices/system/cpu/online") == (
        0, "sys/devices/system/cpu/online of 2 v1\n")
    # A file larger than one READ comes whole from one render.
    for key, sh in ((1, a), (2, b)):
        rc, out = sh.run(f"md5sum {mnt}/proc/big")
        assert rc == 0 and out.split()[0] == hashlib.md5(big_bytes(key)).hexdigest()
    # st_size is the reader's container's bytes: readers that trust it get all.
    for key, sh in ((1, a), (2, b)):
        assert sh.run(f"stat -c %s {mnt}/proc/big") == (0, f"{len(big_bytes(key))}\n")
        rc, out = sh.run(f"{sys.executable} -c 'import os; fd = os.open(\"{mnt}/proc/big\", 0);"
                         f" print(len(os.read(fd, os.fstat(fd).st_size)))'")
        assert (rc, out) == (0, f"{len(big_bytes(key))}\n")
    st = os.stat(mnt / "sys/devices/system/cpu/online")  # no container: the declared size
    assert (st.st_size, st.st_mode & 0o777) == (4096, 0o444)
    assert os.access(mnt / "proc/big", os.R_OK) and not os.access(mnt / "proc/big", os.W_OK)
    assert not os.access(mnt / "proc/big", os.X_OK) and os.access(mnt / "proc", os.X_OK)
    assert sorted(os.listdir(mnt / "proc")) == ["big", "broken", "loadavg", "meminfo",
                                                "uptime"]
    s = svc.stats()
    assert s["containers"] == 2 and s["unknown"] == 0
    f = s["files"]["proc/big"]
    # One render per container, more if a loaded machine let the bytes pass `fresh`
    # between the opens (a stale open asks for a refresh).
    assert f["opens"] == 4 and f["renders"] >= 2 and f["reads"] >= 6 and f["errors"] == 0
    assert f["renders"] == 2 or f["stale"] > 0
    assert f["open_ns"] > 0 and sum(f["hist"]) >= f["reads"]


def test_nested_pid_namespace_is_its_container(service, shells) -> None:
    svc, _, mnt = service
    a = shells()
    svc.register(1, a.pid)
    assert a.run(f"unshare --pid --fork unshare --pid --fork cat {mnt}/proc/uptime") == (
        0, "proc/uptime of 1 v1\n")
    assert svc.stats()["aliases"] == 1
    svc.unregister(1)  # the nested namespace's alias goes with its container
    assert svc.stats()["aliases"] == 0


def test_unknown_readers_get_eio(service, shells) -> None:
    svc, render, mnt = service
    with pytest.raises(OSError) as e:
        (mnt / "proc/meminfo").read_bytes()  # the host (this process) is no container
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:  # and cannot be made one
        svc.register(9, os.getpid())
    assert e.value.errno == errno.EINVAL
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:  # only pid namespaces identify containers
            svc.register_nsfd(9, fd)
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    a = shells()  # a pid namespace nobody registered
    rc, out = a.run(f"cat {mnt}/proc/meminfo")
    assert rc != 0 and "Input/output error" in out
    fd = os.open(f"/proc/{a.pid}/ns/pid", os.O_RDONLY)
    try:
        svc.register_nsfd(1, fd)
        with pytest.raises(OSError) as e:
            svc.register_nsfd(2, fd)
        assert e.value.errno == errno.EEXIST
    finally:
        os.close(fd)  # the server holds its own
    assert a.run(f"cat {mnt}/proc/meminfo") == (0, MEMINFO)
    svc.unregister(1)
    rc, out = a.run(f"cat {mnt}/proc/meminfo")
    assert rc != 0 and "Input/output error" in out
    assert svc.stats()["unknown"] == 3
    assert render.count == {(1, "proc/meminfo"): 1}  # nothing rendered for the unknown


def test_reader_before_its_registration_waits_for_it(service, shells) -> None:
    """A container's first read can come before the daemon has registered it (the
    runtime does not wait for the listener): the open waits for the registration,
    up to the wait timeout (2 s here), instead of failing; the host never waits."""
    svc, render, mnt = service
    a = shells()
    a.send(f"cat {mnt}/proc/meminfo")
    time.sleep(0.3)  # the open is parked by now
    assert svc.stats()["unknown"] == 0
    t0 = time.monotonic()
    svc.register(1, a.pid)
    assert a.result() == (0, MEMINFO)
    assert time.monotonic() - t0 < 1.0
    assert svc.stats()["unknown"] == 0
    b = shells()  # never registered: EIO at the deadline, counted as unknown
    t0 = time.monotonic()
    rc, out = b.run(f"cat {mnt}/proc/uptime")
    assert rc != 0 and "Input/output error" in out
    assert 1.5 < time.monotonic() - t0 < 5
    assert svc.stats()["unknown"] == 1
    t0 = time.monotonic()
    with pytest.raises(OSError):
        (mnt / "proc/meminfo").read_bytes()  # the host: at once
    assert time.monotonic() - t0 < 0.5
    assert render.count == {(1, "proc/meminfo"): 1}


def test_busybox_tools_read_the_emulated_file(service, shells) -> None:
    svc, _, mnt = service
    a = shells("--mount", "--mount-proc")
    svc.register(1, a.pid)
    assert a.run(f"mount --bind {mnt}/proc/meminfo /proc/meminfo")[0] == 0
    # busybox cat tries sendfile(2) first: the kernel's page-cache READ for it is
    # refused (that cache is shared by all containers) and it falls back to read(2).
    assert a.run("busybox cat /proc/meminfo") == (0, MEMINFO)
    assert svc.stats()["files"]["proc/meminfo"]["cached_reads"] >= 1
    assert a.run("busybox head -n 2 /proc/meminfo") == (0, "".join(
        MEMINFO.splitlines(True)[:2]))
    rc, out = a.run("busybox free")
    assert rc == 0
    # total/free come from sysinfo(2) (emulated by the seccomp path, not here);
    # "available" is MemAvailable of the file.
    mem = out.splitlines()[1].split()
    assert mem[0] == "Mem:" and mem[-1] == "220000"
    rc, out = a.run(f"{sys.executable} -c 'print(len(open(\"/proc/meminfo\").read()))'")
    assert (rc, out.strip()) == (0, str(len(MEMINFO)))


def test_stale_bytes_are_served_while_refreshed_then_replaced(service, shells) -> None:
    svc, render, mnt = service
    a = shells()
    svc.register(1, a.pid)
    up = f"cat {mnt}/proc/uptime"
    assert a.run(up) == (0, "proc/uptime of 1 v1\n")
    assert a.run(up) == (0, "proc/uptime of 1 v1\n")  # fresh (0.2 s): not re-rendered
    assert render.count[1, "proc/uptime"] == 1
    time.sleep(0.3)
    # Stale but within max_stale: the previous bytes at once, a refresh requested.
    assert a.run(up) == (0, "proc/uptime of 1 v1\n")
    wait_until(lambda: render.count[1, "proc/uptime"] == 2)
    wait_until(lambda: a.run(up) == (0, "proc/uptime of 1 v2\n"))
    f = svc.stats()["files"]["proc/uptime"]
    assert f["stale"] == 1 and f["waits"] == 1
    # Older than max_stale (0.3 s): the open waits for the new render.
    lo = f"cat {mnt}/proc/loadavg"
    assert a.run(lo) == (0, "proc/loadavg of 1 v1\n")
    time.sleep(0.5)
    assert a.run(lo) == (0, "proc/loadavg of 1 v2\n")
    assert svc.stats()["files"]["proc/loadavg"]["waits"] == 2


def test_render_failure_is_eio_counted_and_logged(service, shells, caplog) -> None:
    svc, _, mnt = service
    a = shells()
    svc.register(1, a.pid)
    t0 = time.monotonic()
    rc, out = a.run(f"cat {mnt}/proc/broken")
    assert rc != 0 and "Input/output error" in out
    assert time.monotonic() - t0 < 1.5  # answered by the failure, not the 2 s timeout
    rc, out = a.run(f"cat {mnt}/proc/broken")  # within the fresh bound: EIO, no re-render
    assert rc != 0 and "Input/output error" in out
    s = svc.stats()
    assert s["render_errors"] == 1
    assert s["files"]["proc/broken"]["failures"] == 1
    assert s["files"]["proc/broken"]["errors"] == 2
    assert any("render of proc/broken failed" in r.getMessage() for r in caplog.records)
    assert a.run(f"cat {mnt}/proc/uptime")[0] == 0  # the others unaffected


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[tuple[core.FuseServer, Path]]:
    """A FuseServer nobody renders for (render requests are left unanswered)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    srv = core.FuseServer(workers=2, wait_timeout=30.0)
    srv.add_file("proc/never")
    srv.add_file("proc/ok")
    srv.start(str(mnt))
    yield srv, mnt
    srv.stop()
    assert not mounted(mnt)


def test_render_that_never_comes_is_eio_within_the_timeout(tmp_path, shells) -> None:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    srv = core.FuseServer(workers=1, wait_timeout=0.5)
    srv.add_file("proc/never")
    srv.start(str(mnt))
    try:
        a = shells()
        srv.register(1, a.pid)
        t0 = time.monotonic()
        rc, out = a.run(f"cat {mnt}/proc/never")
        took = time.monotonic() - t0
        assert rc != 0 and "Input/output error" in out
        assert 0.4 < took < 3.0
        s = srv.stats()
        assert s["files"]["proc/never"]["timeouts"] == 1 and s["parked"] == 0
        assert srv.requests(0) == [(1, 0, 0)]  # it was asked for (a render, no write)
    finally:
        srv.stop()


def test_waiting_reader_never_blocks_others(bare, shells) -> None:
    srv, mnt = bare
    a = shells()
    srv.register(1, a.pid)
    srv.set(1, 1, b"ok\n")
    waiting = shells()
    srv.register(2, waiting.pid)
    waiting.send(f"cat {mnt}/proc/never")  # parked: no render comes
    wait_until(lambda: srv.stats()["parked"] == 1)
    for _ in range(5):  # with all (here: two) workers free, more than their number
        assert a.run(f"cat {mnt}/proc/ok") == (0, "ok\n")
    srv.set(2, 0, b"late\n")  # the render arrives: the parked open is answered
    assert waiting.result() == (0, "late\n")


def test_killed_reader_leaves_nothing_stuck(bare, shells) -> None:
    srv, mnt = bare
    a = shells()
    srv.register(1, a.pid)
    a.send(f"cat {mnt}/proc/never")
    wait_until(lambda: srv.stats()["parked"] == 1)
    (cat,) = a.children()
    t0 = time.monotonic()
    os.kill(cat, signal.SIGKILL)
    # The kernel sends FUSE_INTERRUPT; the parked open is ended at once, not
    # after the 30 s wait.
    rc, _ = a.result(timeout=5)
    assert rc == 128 + signal.SIGKILL and time.monotonic() - t0 < 2
    s = srv.stats()
    assert s["interrupts"] == 1 and s["parked"] == 0
    srv.set(1, 1, b"still serving\n")
    assert a.run(f"cat {mnt}/proc/ok") == (0, "still serving\n")


def test_stop_unmounts_and_binds_fail_without_hanging(tmp_path, shells) -> None:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    srv = core.FuseServer()
    srv.add_file("proc/meminfo")
    srv.start(str(mnt))
    a = shells("--mount")
    srv.register(1, a.pid)
    srv.set(1, 0, MEMINFO.encode())
    target = tmp_path / "meminfo"
    target.write_text("host\n")
    assert a.run(f"mount --bind {mnt}/proc/meminfo {target}")[0] == 0
    assert a.run(f"cat {target}") == (0, MEMINFO)
    a.send(f"exec 3<{target}")  # a reader holding the file open across the stop
    assert a.result()[0] == 0
    assert mounted(mnt)
    srv.stop()
    assert not mounted(mnt)
    rc, out = a.run(f"cat {target}", timeout=5)  # the bind outlives the mount: ENOTCONN
    assert rc != 0 and "not connected" in out
    rc, out = a.run("cat <&3", timeout=5)
    assert rc != 0
    srv.stop()  # idempotent


DIE_SCRIPT = textwrap.dedent("""
    import sys, time
    from interceptd import core
    s = core.FuseServer()
    s.add_file("proc/meminfo")
    s.start(sys.argv[1])
    print("up", flush=True)
    time.sleep(60)
""")


def test_mount_of_a_dead_daemon_is_replaced_at_start(tmp_path, shells) -> None:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.Popen([sys.executable, "-c", DIE_SCRIPT, str(mnt)], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"up\n"
        assert mounted(mnt)
    finally:
        p.kill()
        p.wait()
    with pytest.raises(OSError) as e:  # the dead server's mount: the connection is gone
        os.stat(mnt / "proc")
    assert e.value.errno == errno.ENOTCONN
    srv = core.FuseServer()
    srv.add_file("proc/meminfo")
    srv.start(str(mnt))  # detaches the dead mount first
    try:
        a = shells()
        srv.register(1, a.pid)
        srv.set(1, 0, b"new\n")
        assert a.run(f"cat {mnt}/proc/meminfo") == (0, "new\n")
    finally:
        srv.stop()
    assert not mounted(mnt)


def test_writes_and_non_files_are_refused(bare, shells) -> None:
    srv, mnt = bare
    a = shells()
    srv.register(1, a.pid)
    srv.set(1, 1, b"ok\n")
    rc, out = a.run(f"echo x > {mnt}/proc/ok")
    assert rc != 0 and "Read-only file system" in out
    rc, out = a.run(f"touch {mnt}/proc/new")
    assert rc != 0
    assert a.run(f"cat {mnt}/proc/missing")[0] != 0
    assert a.run(f"ls {mnt}/proc") == (0, "never\nok\n")


def test_concurrent_readers_get_whole_renders_of_their_own_container(tmp_path, shells) -> None:
    """Two containers read a multi-READ file in loops while every open asks for a
    re-render (fresh 0): each read is one render of the reader's own container."""
    versions: dict[int, int] = {}

    def render(key: int, path: str) -> bytes:
        v = versions[key] = versions.get(key, 0) + 1
        return b"".join(b"%d %d %05d\n" % (key, v, i) for i in range(20000))

    svc = FuseService(str(tmp_path / "fs"), [EmulatedFile("proc/stat", fresh=0.0,
                                                          max_stale=30.0)], render,
                      workers=3, renderers=2)
    svc.start()
    try:
        a, b = shells(), shells()
        svc.register(1, a.pid)
        svc.register(2, b.pid)
        loop = f"for i in $(seq 40); do md5sum {tmp_path}/fs/proc/stat | cut -c1-32; done"
        a.send(loop)
        b.send(loop)
        for key, sh in ((1, a), (2, b)):
            rc, out = sh.result(timeout=60)
            assert rc == 0
            lines = out.split()
            sums = set(lines)
            assert len(lines) == 40
            valid = {hashlib.md5(b"".join(b"%d %d %05d\n" % (key, v, i) for i in range(20000)))
                     .hexdigest() for v in range(1, versions[key] + 1)}
            assert sums <= valid  # whole renders, never spliced, never the other's
            assert len(sums) > 1  # the bytes changed under the readers
        s = svc.stats()["files"]["proc/stat"]
        assert s["renders"] > 2 and s["stale"] > 0 and s["errors"] == 0
    finally:
        svc.stop()


def test_a_forked_child_stopping_its_copy_leaves_the_server(bare, shells) -> None:
    srv, mnt = bare
    a = shells()
    srv.register(1, a.pid)
    srv.set(1, 1, b"ok\n")
    pid = os.fork()
    if pid == 0:  # e.g. a helper the daemon forks, collecting its copy of the server
        try:
            srv.stop()
            del srv
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert mounted(mnt)
    assert a.run(f"cat {mnt}/proc/ok") == (0, "ok\n")
    with pytest.raises(OSError) as e:  # one start per server
        srv.start(str(mnt))
    assert e.value.errno == errno.EBUSY


@pytest.mark.parametrize(("path", "err"), [
    ("", errno.EINVAL), ("/", errno.EINVAL), ("sys/../x", errno.EINVAL),
    ("sys/./x", errno.EINVAL), ("sys//x", errno.EINVAL), ("sys/x/", errno.EINVAL),
    ("sys/" + "x" * 256, errno.EINVAL), ("proc/meminfo", errno.EEXIST),
    ("proc/meminfo/x", errno.ENOTDIR), ("proc", errno.EEXIST)])
def test_bad_file_paths_are_refused_and_leave_no_trace(tmp_path, shells, path: str,
                                                       err: int) -> None:
    srv = core.FuseServer()
    srv.add_file("proc/meminfo")
    with pytest.raises(OSError) as e:
        srv.add_file(path)
    assert e.value.errno == err
    with pytest.raises(OSError) as e:
        srv.add_file("proc/x", fresh=2.0, max_stale=1.0)  # max_stale < fresh
    assert e.value.errno == errno.EINVAL
    assert srv.add_file("/sys/ok") == 1
    srv.start(str(tmp_path))
    try:
        assert sorted(os.listdir(tmp_path)) == ["proc", "sys"]
        assert os.listdir(tmp_path / "sys") == ["ok"]  # no directory of a refused path
    finally:
        srv.stop()


def test_writable_file_hands_writes_to_python(tmp_path, shells) -> None:
    """A writable file (a /proc/sys value): each write reaches the service's `write`
    with the writer's container, uid and data, is answered with its result, and a
    refresh shows the new value to that container only; a failing writer is EIO; a
    writer outside every container is EIO; O_TRUNC and offsets past 0 change nothing."""
    values: dict[int, bytes] = {}
    seen: list[tuple[int, str, bytes, int]] = []
    svc: FuseService

    def render(key: int, path: str) -> bytes:
        return values.get(key, b"1\n")

    def write(key: int, path: str, data: bytes, uid: int, pid: int) -> int:
        seen.append((key, path, data, uid))
        if data.strip() == b"boom":
            raise RuntimeError("stub write failure")
        if not data.strip().isdigit():
            return -errno.EINVAL
        values[key] = data.strip() + b"\n"
        svc.refresh(key, path)
        return len(data)

    files = [EmulatedFile("proc/sys/kernel/panic", writable=True), EmulatedFile("proc/ro")]
    svc = FuseService(fs_dir(str(tmp_path / "state")), files, render, write=write,
                      wait_timeout=2.0)
    svc.start()
    mnt = Path(svc.mountpoint)
    try:
        a, b = shells(), shells()
        svc.register(1, a.pid)
        svc.register(2, b.pid)
        f = f"{mnt}/proc/sys/kernel/panic"
        assert a.run(f"cat {f}") == (0, "1\n")
        assert a.run(f"echo 7 > {f}") == (0, "")
        assert a.run(f"cat {f}") == (0, "7\n")
        assert b.run(f"cat {f}") == (0, "1\n")  # the sibling keeps its own
        assert seen[-1][:3] == (1, "proc/sys/kernel/panic", b"7\n")
        assert seen[-1][3] == os.geteuid()
        rc, out = a.run(f"/bin/echo abc > {f}")
        assert rc != 0 and "Invalid argument" in out, (out, seen, svc.stats())
        rc, out = a.run(f"/bin/echo boom > {f}")
        assert rc != 0 and "Input/output error" in out
        # A write past the start is ignored, as the kernel's strict sysctl writes.
        assert a.run(f"{sys.executable} -c 'import os; fd = os.open(\"{f}\", os.O_WRONLY);"
                     f" print(os.pwrite(fd, b\"9\", 3))'") == (0, "1\n")
        assert a.run(f"cat {f}") == (0, "7\n")
        assert (os.stat(f).st_mode & 0o777) == 0o644
        with pytest.raises(OSError) as ei, open(f, "w") as fh:  # the host: no container
            fh.write("3\n")
        assert ei.value.errno == errno.EIO
        rc, out = a.run(f"echo 3 > {mnt}/proc/ro")
        assert rc != 0 and "Read-only file system" in out
        s = svc.stats()
        assert s["files"]["proc/sys/kernel/panic"]["writes"] == 1
        assert s["parked"] == 0
    finally:
        svc.stop()
    assert not mounted(mnt)
