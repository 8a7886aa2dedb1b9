"""The daemon serves the emulated files of each attached container: the FUSE tree at
<state-dir>/fs is mounted at start-up, a container is registered at attach (a reader
in its pid namespace gets its figures), unregistered at release, and the mount is gone
after the daemon stops. Containers through real runc and crun, with a memory limit."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.harness import Runtime

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

LIMIT = 256 << 20


def fuse_mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def read_in_pidns(pid: int, path: str) -> subprocess.CompletedProcess[str]:
    """`cat path` from a process in `pid`'s pid namespace but the host's mount namespace
    (the tree is at its host path; the container itself sees it through binds)."""
    return subprocess.run(["nsenter", "-t", str(pid), "-p", "--", "cat", path],
                          capture_output=True, text=True, timeout=10)


def wait_for(pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


def test_daemon_serves_each_container_its_figures(runtime: Runtime, bundle_factory,
                                                   daemon, new_id) -> None:
    st = daemon.control("status")
    em = st["emulation"]
    assert em is not None, daemon.log()
    fs = em["fs"]
    assert fs == os.path.join(str(daemon.state_dir), "fs") and fuse_mounted(fs)
    assert "/proc/meminfo" in em["files"] and "/sys/devices/system/cpu/online" in em["files"]
    b = bundle_factory(args=["sleep", "60"], notify=["sysfs"],
                       listener_path=daemon.listener_path)
    b.config["linux"]["resources"] = {"memory": {"limit": LIMIT}}
    b.write_config()
    cid = new_id("emd")
    with runtime.started(b, cid):
        c = daemon.wait_container(cid)
        pid = c["init_pid"]
        res = wait_for(lambda: (r := read_in_pidns(pid, f"{fs}/proc/meminfo")).returncode == 0
                       and r)
        assert res, read_in_pidns(pid, f"{fs}/proc/meminfo").stderr
        total = next(ln for ln in res.stdout.splitlines() if ln.startswith("MemTotal:"))
        assert int(total.split()[1]) == LIMIT >> 10
        online = read_in_pidns(pid, f"{fs}/sys/devices/system/cpu/online")
        assert online.returncode == 0 and online.stdout.strip()
        # The host (no container) reads EIO.
        with pytest.raises(OSError), open(f"{fs}/proc/meminfo") as f:
            f.read()
    # Released: a reader left in that namespace is gone with it; a new container
    # attaches while nothing of the old one is kept.
    assert wait_for(lambda: daemon.container(cid) is None)
    assert daemon.alive()
    assert daemon.stop() == 0
    assert not fuse_mounted(fs)
