"""Emulated /proc and /sys inside real containers started by interceptd-runc over runc
and crun: busybox's tools read the container's limits (256 MiB, one CPU by cpuset or by
quota), also after `unshare -m --mount-proc` and in a fresh procfs; the binds cannot be
unmounted or moved; mountinfo names no host path of the rootfs; the daemon's FUSE
mount is gone after it stops."""

from __future__ import annotations

import os
import re

import pytest

from tests.harness import Runtime
from tests.integration.test_runtime_shim import assert_nothing_left, plain_bundle, shim

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]
__all__ = ["shim"]  # the fixture, shared with test_runtime_shim

LIMIT_KB = 256 * 1024
CPU = {"cpuset": {"cpus": "0"},
       "quota": {"quota": 100000, "period": 100000}}

# Each section starts with a marker line; `report` runs them in the container's /proc,
# after `unshare -m --mount-proc`, and in a procfs mounted afresh at /tmp/p.
REPORT = r"""
report() {
  P=$1
  echo "== $2"
  grep MemTotal: $P/meminfo
  echo "processors=$(grep -c ^processor $P/cpuinfo)"
  echo "statcpus=$(grep -c '^cpu[0-9]' $P/stat)"
  echo "uptime=$(cut -d' ' -f1 $P/uptime)"
  echo "online=$(cat /sys/devices/system/cpu/online)"
}
"""
SCRIPT = REPORT + r"""
report /proc main
free | grep Mem:
echo "nproc=$(nproc)"
uptime
top -bn1 | head -3
unshare -m --mount-proc sh -c '. /r; report /proc unshared'
mkdir -p /tmp/p && mount -t proc proc /tmp/p && report /tmp/p fresh
mkdir -p /tmp/s && mount -t sysfs sysfs /tmp/s &&
  echo "sysfs_online=$(cat /tmp/s/devices/system/cpu/online)"
echo "== immutability"
umount /proc/meminfo; echo "umount_rc=$?"
umount -l /proc/meminfo; echo "umount_l_rc=$?"
mkdir -p /tmp/mv && mount --move /proc/meminfo /tmp/mv; echo "move_rc=$?"
mount -o remount,bind,rw /proc/meminfo; echo "remount_rc=$?"
grep MemTotal: /proc/meminfo
echo "== mountinfo"
cat /proc/self/mountinfo
echo "== mounts"
cat /proc/mounts
"""


def sections(out: str) -> dict[str, str]:
    parts = re.split(r"^== (\S+)$", out, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def check_report(text: str, how: str) -> None:
    assert f"MemTotal:         {LIMIT_KB} kB" in text or re.search(
        rf"MemTotal:\s+{LIMIT_KB} kB", text), text
    assert "processors=1" in text, text
    assert "statcpus=1" in text, text
    up = float(re.search(r"uptime=([\d.]+)", text).group(1))
    assert 0 <= up < 60, text  # the container's, not the host's
    assert "online=0" in text, text


@pytest.mark.parametrize("cpu", sorted(CPU))
def test_tools_read_the_containers_truth(shim: Runtime, bundle_factory, new_id, cpu) -> None:
    em = shim.daemon.control("status")["emulation"]  # type: ignore[attr-defined]
    assert em is not None
    b = plain_bundle(bundle_factory, ["sh", "-c", SCRIPT], caps="all")
    (b.rootfs / "r").write_text(REPORT)
    b.config["linux"]["resources"] = {"memory": {"limit": LIMIT_KB * 1024},
                                      "cpu": CPU[cpu]}
    b.write_config()
    res = shim.run(b, new_id(f"emu-{cpu}"))
    assert res.rc == 0, res.stdout + res.stderr
    s = sections(res.stdout)
    check_report(s["main"], "main")
    check_report(s["unshared"], "unshare -m --mount-proc")
    check_report(s["fresh"], "fresh procfs")
    assert "sysfs_online=0\n" in s["fresh"], s["fresh"]  # a fresh sysfs gets the bind too
    main = s["main"]
    free = re.search(r"Mem:\s+(\d+)", main)
    assert free and int(free.group(1)) == LIMIT_KB, main  # sysinfo(2)
    if cpu == "cpuset":
        assert "nproc=1" in main, main  # sched_getaffinity: only a cpuset limits it
    m = re.search(r"Mem: (\d+)K used, (\d+)K free", main)
    assert m and int(m.group(1)) + int(m.group(2)) == LIMIT_KB, main  # top
    assert re.search(r"up +(\d+ min|0:0\d)", main), main  # uptime(1): minutes, not hours
    # uptime(1)'s load averages (sysinfo(2)) are the container's, as top's (/proc/loadavg).
    la = re.search(r"load average: ([\d.]+), ([\d.]+), ([\d.]+)", main)
    top_la = re.search(r"Load average: ([\d.]+) ([\d.]+) ([\d.]+)", main)
    assert la and top_la and la.groups() == top_la.groups(), main
    imm = s["immutability"]
    for what in ("umount_rc", "umount_l_rc", "move_rc", "remount_rc"):
        assert re.search(rf"{what}=[1-9]", imm), imm
    assert re.search(rf"MemTotal:\s+{LIMIT_KB} kB", imm), imm
    # A directory rootfs: /proc/mounts names only the device; mountinfo's root field is
    # the directory's path within its filesystem, as for any bind (docs/runtime.md;
    # Docker's overlay2 rootfs shows none: test_docker).
    assert str(b.rootfs) not in s["mounts"], s["mounts"]
    root = next(ln for ln in s["mountinfo"].splitlines() if ln.split()[4:5] == ["/"])
    assert root.split()[3] == str(b.rootfs)
    assert_nothing_left(shim)


def test_fuse_mount_gone_after_daemon_stops(shim: Runtime) -> None:
    d = shim.daemon  # type: ignore[attr-defined]
    fs = d.control("status")["emulation"]["fs"]
    with open("/proc/self/mountinfo") as f:
        assert any(ln.split()[4] == fs for ln in f)
    assert d.stop() == 0
    with open("/proc/self/mountinfo") as f:
        assert not any(ln.split()[4] == fs for ln in f)


def test_diskstats_shows_the_containers_reads(shim: Runtime, bundle_factory, new_id) -> None:
    """A v1 host (this one): the daemon's unreached throttle rule turns the blkio counters
    on, so a container that read from the disk sees that disk, with its own reads."""
    b = plain_bundle(bundle_factory, ["sh", "-c", "cat /data >/dev/null; cat /proc/diskstats"],
                     caps="all")
    data = b.rootfs / "data"
    data.write_bytes(os.urandom(4 << 20))
    fd = os.open(data, os.O_RDONLY)
    try:  # out of the page cache, so the container's cat reads the disk
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    dev = os.stat(data).st_dev
    res = shim.run(b, new_id("disk"))
    assert res.rc == 0, res.stdout + res.stderr
    lines = [ln.split() for ln in res.stdout.splitlines() if ln.strip()]
    assert lines, res.stdout  # not empty
    disk = {(int(f[0]), int(f[1])): f for f in lines}
    whole = next((k for k in disk if k[0] == os.major(dev)), None)
    assert whole is not None, (res.stdout, os.major(dev), os.minor(dev))
    sectors = int(disk[whole][5])
    assert sectors * 512 >= 4 << 20, res.stdout  # its own reads, at least the file
    assert_nothing_left(shim)
