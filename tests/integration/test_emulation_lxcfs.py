"""The renderers against Debian's LXCFS, side by side, on real cgroups of this host.

A private LXCFS (`--enable-cfs`, so it cuts the CPUs to the quota as we do) runs on its own
mountpoint. For each cgroup set-up a `sleep`, pid 1 of a new pid namespace, stands for the
container's init, and `cat`, started inside the same cgroups and pid namespace, reads
LXCFS's files; interceptd's snapshot of the same cgroups is rendered and both must report
the same MemTotal, SwapTotal and CPU count, and the same uptime (the init's age).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from interceptd.emulation import (
    cgpaths,
    cpu_online,
    cpuinfo,
    hostfacts,
    meminfo,
    snapshot,
    stat,
    uptime,
)
from tests.harness import lxcfs as lxcfsh

pytestmark = pytest.mark.integration

BASE = Path("/sys/fs/cgroup")
V1 = ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio")



@pytest.fixture(scope="module")
def lxcfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("lxcfs")
    mnt = d / "mnt"
    mnt.mkdir()
    with lxcfsh.running(mnt, d / "pid") as m:
        yield m


@contextlib.contextmanager
def cgroup(mem: str | None, cpus: str, quota: int | None) -> Iterator[str]:
    """`interceptd-test-<id>` in every v1 hierarchy and the unified one; yields its name."""
    name = f"interceptd-test-{uuid.uuid4().hex[:10]}"
    made: list[Path] = []
    try:
        for h in (*V1, "unified"):
            d = BASE / h / name
            d.mkdir()
            made.append(d)
        (BASE / "cpuset" / name / "cpuset.mems").write_text("0")
        (BASE / "cpuset" / name / "cpuset.cpus").write_text(cpus)
        if mem:
            (BASE / "memory" / name / "memory.limit_in_bytes").write_text(mem)
        if quota:
            (BASE / "cpu" / name / "cpu.cfs_quota_us").write_text(str(quota))
        (BASE / "pids" / name / "pids.max").write_text("64")
        yield name
    finally:
        for d in made:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # its last task is still exiting


def _enter(name: str) -> None:
    for h in (*V1, "unified"):
        with open(BASE / h / name / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))


def read_inside(name: str, init: int, path: Path) -> str:
    return subprocess.run(["nsenter", "-t", str(init), "-p", "cat", str(path)], check=True,
                          capture_output=True, text=True,
                          preexec_fn=lambda: _enter(name)).stdout


def ns_init(unshare: subprocess.Popen[bytes]) -> int:
    """unshare's forked child: pid 1 of the new pid namespace."""
    deadline = time.monotonic() + 5
    while True:
        kids = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        assert time.monotonic() < deadline, "unshare did not fork"
        time.sleep(0.01)


def ours(name: str, init: int) -> dict[str, bytes]:
    host = hostfacts.read_host()
    with open(f"/proc/{init}/cgroup") as f:
        pc = cgpaths.parse_proc_cgroup(f.read())
    with open("/proc/self/mountinfo") as f:
        paths = cgpaths.locate(pc, cgpaths.parse_mountinfo(f.read()))
    snap = snapshot.read_snapshot(paths, host, init_pid=init)
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    return {mod.__name__.rsplit(".", 1)[1]: mod.render(snap, host, now)
            for mod in (meminfo, cpuinfo, stat, uptime, cpu_online)}


def kb(text: str, key: str) -> int:
    m = re.search(rf"^{re.escape(key)}:\s+(\d+) kB$", text, re.M)
    assert m, key
    return int(m.group(1))


@pytest.mark.parametrize(("mem", "cpus", "quota", "count"), [
    ("256M", "0", None, 1),          # 256 MiB, one CPU by cpuset
    (None, "0-1", 150000, 2),        # quota of 1.5 CPUs on two
    ("512M", "0-1", 50000, 1),       # quota of half a CPU
])
def test_same_memory_and_cpus_as_lxcfs(lxcfs, mem, cpus, quota, count):
    with cgroup(mem, cpus, quota) as name:
        unshare = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "60"],
                                   preexec_fn=lambda: _enter(name))
        try:
            init = ns_init(unshare)
            time.sleep(1.0)  # an age that truncation cannot hide
            theirs = {f: read_inside(name, init, lxcfs / "proc" / f)
                      for f in ("meminfo", "cpuinfo", "stat", "uptime")}
            theirs["online"] = read_inside(name, init, lxcfs / "sys/devices/system/cpu/online")
            mine = {k: v.decode() for k, v in ours(name, init).items()}
        finally:
            unshare.kill()  # --kill-child takes the namespace's init with it
            unshare.wait()
    host_total = hostfacts.read_host().mem_kb("MemTotal")
    expect_total = (256 << 10) if mem == "256M" else (512 << 10) if mem else host_total
    assert kb(mine["meminfo"], "MemTotal") == kb(theirs["meminfo"], "MemTotal") == expect_total
    assert kb(mine["meminfo"], "SwapTotal") == kb(theirs["meminfo"], "SwapTotal")
    for text in (mine["cpuinfo"], theirs["cpuinfo"]):
        assert re.findall(r"^processor\t: (\d+)$", text, re.M) == [
            str(i) for i in range(count)]
    for text in (mine["stat"], theirs["stat"]):
        assert re.findall(r"^cpu(\d+) ", text, re.M) == [str(i) for i in range(count)]
    assert mine["cpu_online"] == theirs["online"] == ("0\n" if count == 1 else "0-1\n")
    # Both count from the namespace's init: read a moment apart, a second old.
    up_mine, up_theirs = float(mine["uptime"].split()[0]), float(theirs["uptime"].split()[0])
    assert 1.0 <= up_theirs <= up_mine < up_theirs + 2.0
