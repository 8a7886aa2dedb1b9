"""interceptd's emulated files and Debian's LXCFS side by side inside one real container
(runc and crun; 256 MiB, one CPU by cpuset or by CFS quota, a pids limit): the
container gets interceptd's files where interceptd-runc binds them (`emulbinds.apply`
on a clone of the daemon's tree) and LXCFS's (`--enable-cfs`, on its own mountpoint)
under /lx; both must report the same MemTotal, CPU count and CPU list, and coherent
uptime and /proc/stat."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from interceptd.runtime import emulbinds
from tests.harness import Runtime
from tests.harness import lxcfs as lxcfsh

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

LX_FILES = ("proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime",
            "sys/devices/system/cpu/online")
CPU = {"cpuset": {"cpus": "0"}, "quota": {"quota": 50000, "period": 100000}}
SCRIPT = r"""
for f in proc/meminfo proc/cpuinfo proc/stat proc/uptime sys/devices/system/cpu/online; do
  n=$(echo $f | tr / _)
  for side in ours lx; do
    if [ $side = ours ]; then p=/$f; else p=/lx/$n; fi
    echo "== $side $f"
    cat $p
  done
done
"""



@pytest.fixture
def lxcfs(workdir: Path) -> Iterator[Path]:
    mnt = workdir / "lxcfs"
    mnt.mkdir()
    with lxcfsh.running(mnt, workdir / "lxcfs.pid") as m:
        yield m


@pytest.fixture
def tree(daemon, workdir: Path) -> Iterator[Path]:
    """A clone of the daemon's tree where the container's root can walk (as the shim
    makes one in each container's mount dir)."""
    em = daemon.control("status")["emulation"]
    assert em is not None, daemon.log()
    t = workdir / "emul"
    emulbinds.clone_tree(em["fs"], str(t))
    try:
        yield t
    finally:
        subprocess.run(["umount", "-l", str(t)], check=True)


def parse(out: str) -> dict[tuple[str, str], str]:
    parts = re.split(r"^== (\S+) (\S+)$", out, flags=re.M)
    return {(parts[i], parts[i + 1]): parts[i + 2] for i in range(1, len(parts) - 2, 3)}


def processors(text: str) -> int:
    return len(re.findall(r"^processor\s*:", text, flags=re.M))


def memtotal(text: str) -> int:
    return int(re.search(r"^MemTotal:\s+(\d+) kB", text, flags=re.M).group(1))


@pytest.mark.parametrize("cpu", sorted(CPU))
def test_same_figures_as_lxcfs_in_a_container(runtime: Runtime, bundle_factory, daemon,
                                              lxcfs: Path, tree: Path, new_id, cpu) -> None:
    b = bundle_factory(args=["sh", "-c", SCRIPT], notify=["sysfs"],
                       listener_path=daemon.listener_path)
    cfg = b.config
    cfg["linux"]["resources"] = {"memory": {"limit": 256 << 20}, "cpu": CPU[cpu],
                                 "pids": {"limit": 64}}
    bound = emulbinds.apply(cfg, emulbinds.wanted(daemon.control("status")), str(tree))
    assert "/proc/meminfo" in bound
    for f in LX_FILES:
        cfg["mounts"].append({"destination": "/lx/" + f.replace("/", "_"), "type": "bind",
                              "source": str(lxcfs / f),
                              "options": ["bind", "ro", "nosuid", "nodev"]})
    b.write_config()
    res = runtime.run(b, new_id(f"lxc-{cpu}"))
    assert res.rc == 0, res.stdout + res.stderr
    got = parse(res.stdout)
    ours = {f: got[("ours", f)] for f in LX_FILES}
    lx = {f: got[("lx", f)] for f in LX_FILES}
    assert memtotal(ours["proc/meminfo"]) == memtotal(lx["proc/meminfo"]) == 256 * 1024
    assert processors(ours["proc/cpuinfo"]) == processors(lx["proc/cpuinfo"]) == 1
    assert ours["sys/devices/system/cpu/online"].strip() == \
        lx["sys/devices/system/cpu/online"].strip() == "0"
    cpus = [ln.split()[0] for t in (ours, lx) for ln in t["proc/stat"].splitlines()
            if re.match(r"cpu\d", ln)]
    assert cpus == ["cpu0", "cpu0"], (ours["proc/stat"], lx["proc/stat"])
    up_ours, up_lx = (float(t["proc/uptime"].split()[0]) for t in (ours, lx))
    assert 0 <= up_ours < 30 and 0 <= up_lx < 30 and abs(up_ours - up_lx) < 2, (up_ours,
                                                                                 up_lx)
