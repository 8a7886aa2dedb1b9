"""The container's CPUs and clock, shared by cpuinfo, stat, uptime and the cpu lists.

CPUs are renumbered from 0 (the container sees CPUs 0..n-1 whichever host CPUs its cpuset
holds). Its cpu time, from its cgroup, is split evenly across them, and each CPU's idle
time is what the container's uptime leaves: so per CPU user+nice+system+idle equals the
container's uptime in ticks, and /proc/uptime's idle is the sum of /proc/stat's.
"""

from __future__ import annotations

from interceptd.emulation.hostfacts import CpuTimes, HostFacts
from interceptd.emulation.snapshot import CgroupSnapshot


def container_uptime(snap: CgroupSnapshot, now: float) -> float:
    """Seconds since the container's init started; `now` is the host's CLOCK_BOOTTIME."""
    if snap.start is None:
        return max(0.0, now)
    return max(0.0, now - snap.start)


def container_btime(snap: CgroupSnapshot, host: HostFacts) -> int:
    """Wall-clock second the container 'booted': what a time namespace whose boot-time
    offset is minus the init's start would make the kernel print."""
    return host.btime + int(snap.start or 0)


def split(total: int, n: int) -> list[int]:
    """`total` over `n` CPUs, the remainder to the first ones (each share only grows
    as the total grows)."""
    base, rest = divmod(total, n)
    return [base + (1 if i < rest else 0) for i in range(n)]


def cpu_times(snap: CgroupSnapshot, host: HostFacts, now: float) -> list[CpuTimes]:
    n = len(snap.cpus)
    us_per_tick = 1_000_000 // host.clk_tck
    user = snap.cpu_user_us // us_per_tick
    nice = snap.cpu_nice_us // us_per_tick
    system = snap.cpu_system_us // us_per_tick
    elapsed = int(container_uptime(snap, now) * host.clk_tck)
    idle = max(0, n * elapsed - user - nice - system)
    cols = zip(split(user, n), split(nice, n), split(system, n), split(idle, n), strict=True)
    return [CpuTimes(user=u, nice=ni, system=s, idle=i) for u, ni, s, i in cols]


def total(times: list[CpuTimes]) -> CpuTimes:
    sums = [sum(col) for col in zip(*(t.fields() for t in times), strict=True)]
    return CpuTimes(*sums) if sums else CpuTimes()
