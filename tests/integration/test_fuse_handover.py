"""The FUSE server adopting a dead predecessor's connection (csrc/fusefs.c
icd_fuse_adopt, docs/emulation-fuse.md "Hand-over"): a server process with a reader's
open parked in it and another reader's file open is SIGKILLed; a new server, whose
files were declared in another order, adopts the connection from a copy of its fd:
the parked open is resent by the kernel and answered, the open file reads the new
server's bytes through the predecessor's handle, and a name never looked up before
resolves under a directory id the kernel got from the predecessor."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from interceptd import core
from tests.integration.test_fuse_server import NsShell, mounted, shells

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]
__all__ = ["shells"]  # the fixture

SYS_pidfd_getfd = 438  # x86_64
PREDECESSOR = textwrap.dedent("""
    import sys
    from interceptd import core
    s = core.FuseServer(workers=1, wait_timeout=30.0)  # its parked open never times out
    s.add_file("sys/x")
    m = s.add_file("proc/meminfo")
    u = s.add_file("proc/uptime")
    s.start(sys.argv[1])
    s.register(1, int(sys.argv[2]))
    print("up", s.dev, s.fd, flush=True)
    while True:
        for key, fid, _ in s.requests(None):
            if fid == u:
                print("parked", flush=True)  # never rendered: the open stays parked
            else:
                s.set(key, fid, b"old\\n")
""")


def _steal(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        if got < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return got
    finally:
        os.close(pidfd)


def test_adopted_connection_answers_what_the_dead_server_held(
        tmp_path: Path, shells: Callable[..., NsShell]) -> None:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    a = shells()
    p = subprocess.Popen([sys.executable, "-c", PREDECESSOR, str(mnt), str(a.pid)],
                         stdout=subprocess.PIPE, text=True)
    kept = -1
    srv = None
    try:
        assert p.stdout is not None
        up = p.stdout.readline().split()
        assert up[0] == "up", up
        dev, fd = int(up[1]), int(up[2])
        assert a.run(f"exec 3<{mnt}/proc/meminfo") == (0, "")  # the predecessor's handle
        a.send(f"cat {mnt}/proc/uptime")  # parked in the predecessor
        assert p.stdout.readline() == "parked\n"
        kept = _steal(p.pid, fd)  # the fd store's copy
        p.kill()
        p.wait()
        srv = core.FuseServer(workers=2)
        m = srv.add_file("proc/meminfo")  # another order: other indexes, the same ids
        w = srv.add_file("proc/swaps")  # a file the predecessor did not have
        u = srv.add_file("proc/uptime")
        srv.add_file("sys/x")
        with pytest.raises(OSError):  # not the connection mounted there
            srv.adopt(kept, str(tmp_path), dev)
        srv.adopt(kept, str(mnt), dev)
        srv.register(1, a.pid)
        srv.set(1, m, b"new meminfo\n")
        srv.set(1, u, b"new uptime\n")
        srv.set(1, w, b"swaps\n")
        srv.resend()
        srv.serve()
        assert a.result() == (0, "new uptime\n")  # the open the dead server held
        assert a.run("cat <&3") == (0, "new meminfo\n")  # its handle, served anew
        # Looked up under the directory id the kernel got from the predecessor.
        assert a.run(f"cat {mnt}/proc/swaps") == (0, "swaps\n")
        assert srv.stats()["foreign"] >= 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if kept >= 0:
            os.close(kept)
        if srv is not None:
            srv.stop()
    assert not mounted(mnt)
