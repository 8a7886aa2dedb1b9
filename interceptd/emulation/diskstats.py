"""/proc/diskstats: the host's disks the container did I/O on, with its own counts.

The cgroup counts operations and bytes per device (and discards), not merges, time in
queue or in-flight requests: those fields are 0. Devices it never touched are left out,
as LXCFS does, so a container learns no more of the host's disks than it used."""

from __future__ import annotations

from interceptd.emulation.hostfacts import HostFacts
from interceptd.emulation.iostat import IoStat
from interceptd.emulation.snapshot import CgroupSnapshot

SECTOR = 512


def disk_line(major: int, minor: int, name: str, s: IoStat) -> str:
    # The kernel's "%4d %7d %pg" then 17 counters (reads, merges, sectors, ticks; the
    # same for writes; in flight, io ticks, queue time; discards x4; flushes x2).
    counts = (s.rios, 0, s.rbytes // SECTOR, 0, s.wios, 0, s.wbytes // SECTOR, 0, 0, 0, 0,
              s.dios, 0, s.dbytes // SECTOR, 0, 0, 0)
    return f"{major:4d} {minor:7d} {name}" + "".join(f" {c}" for c in counts) + "\n"


def render(snap: CgroupSnapshot, host: HostFacts, now: float) -> bytes:
    out = []
    for (major, minor), name in host.disks.items():
        s = snap.io.get((major, minor))
        if s is None or s == IoStat():
            continue
        out.append(disk_line(major, minor, name, s))
    return "".join(out).encode()
