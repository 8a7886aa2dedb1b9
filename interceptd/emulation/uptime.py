"""/proc/uptime: seconds since the container's init started, and the idle seconds summed
over its CPUs (the same idle /proc/stat shows), both truncated to hundredths as the
kernel prints them."""

from __future__ import annotations

from interceptd.emulation import cpuview
from interceptd.emulation.hostfacts import HostFacts
from interceptd.emulation.snapshot import CgroupSnapshot


def centis(cs: int) -> str:
    return f"{cs // 100}.{cs % 100:02d}"


def render(snap: CgroupSnapshot, host: HostFacts, now: float) -> bytes:
    up_cs = int(cpuview.container_uptime(snap, now) * 100)
    idle_ticks = sum(t.idle for t in cpuview.cpu_times(snap, host, now))
    idle_cs = idle_ticks * 100 // host.clk_tck
    return f"{centis(up_cs)} {centis(idle_cs)}\n".encode()
