"""One container's cgroup figures, read at once into a frozen `CgroupSnapshot`.

`read_snapshot` takes the container's `CgroupPaths` (cgpaths.locate) and the host's facts
and reads only files: v1 controllers are preferred where the container has them (this
host's hybrid layout mounts them all), else the v2 unified tree. Limits are the smallest
up the tree (a parent's limit binds the child) and never above the host's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from interceptd.emulation import iostat, tasks
from interceptd.emulation.cgpaths import CgroupPaths, Hierarchy
from interceptd.emulation.hostfacts import HostFacts, parse_cpulist

V1_UNLIMITED = 1 << 62  # v1 prints PAGE_COUNTER_MAX pages as 0x7FFFFFFFFFFFF000

# v1 memory.stat's hierarchical keys under v2's names (the renderers speak v2).
V1_MEMSTAT = {
    "total_cache": "file", "total_rss": "anon", "total_rss_huge": "anon_thp",
    "total_shmem": "shmem", "total_mapped_file": "file_mapped", "total_dirty": "file_dirty",
    "total_writeback": "file_writeback", "total_swap": "swap",
    "total_inactive_anon": "inactive_anon", "total_active_anon": "active_anon",
    "total_inactive_file": "inactive_file", "total_active_file": "active_file",
    "total_unevictable": "unevictable",
}


@dataclass(frozen=True)
class CgroupSnapshot:
    layout: str  # "v1", "v2" or "hybrid"
    mem_limit: int  # bytes: smallest limit up the tree, capped by the host's MemTotal
    mem_accounted: bool  # False: no memory cgroup found, the host's figures are shown
    mem_limited: bool  # False: no cgroup limit, mem_limit is the host's memory
    mem_usage: int
    mem_stats: dict[str, int] = field(default_factory=dict)  # v2 memory.stat names
    swap_accounted: bool = False  # the kernel counts this cgroup's swap
    swap_limit: int | None = None  # bytes of swap alone; None: no limit of its own
    swap_usage: int = 0
    cpuset: tuple[int, ...] = (0,)  # the CPUs it may run on (host numbering)
    cpu_quota: float | None = None  # CPUs' worth of CFS quota, smallest up the tree
    cpu_user_us: int = 0
    cpu_system_us: int = 0
    cpu_nice_us: int = 0
    pids_current: int | None = None
    io: dict[tuple[int, int], iostat.IoStat] = field(default_factory=dict)
    start: float | None = None  # seconds after the host's boot its init started
    tasks: tasks.TaskSummary | None = None

    @property
    def cpus(self) -> tuple[int, ...]:
        """The CPUs shown: the cpuset, cut to ceil(quota) (at least one)."""
        if self.cpu_quota is None:
            return self.cpuset
        return self.cpuset[: max(1, min(len(self.cpuset), math.ceil(self.cpu_quota)))]


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def read_int(path: str) -> int | None:
    """A single number; None for absent, unreadable, "max" or v1's no-limit value."""
    text = read_text(path)
    if text is None:
        return None
    try:
        n = int(text.split()[0])
    except (ValueError, IndexError):
        return None
    return None if n < 0 or n >= V1_UNLIMITED else n


def flat_keyed(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (read_text(path) or "").splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            continue
    return out


def min_up(h: Hierarchy, name: str) -> int | None:
    vals = [v for d in h.chain() if (v := read_int(f"{d}/{name}")) is not None]
    return min(vals) if vals else None


@dataclass(frozen=True)
class MemFigures:
    limit: int
    accounted: bool = False
    limited: bool = False
    usage: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    swap_accounted: bool = False
    swap_limit: int | None = None
    swap_usage: int = 0


def _memory(p: CgroupPaths, host_total: int) -> MemFigures:
    swap_accounted, swap_limit, swap_usage = False, None, 0
    if "memory" in p.v1:
        h = p.v1["memory"]
        d = h.cgroup
        limit = min_up(h, "memory.limit_in_bytes")
        usage = read_int(f"{d}/memory.usage_in_bytes") or 0
        raw = flat_keyed(f"{d}/memory.stat")
        stats = {V1_MEMSTAT[k]: v for k, v in raw.items() if k in V1_MEMSTAT}
        if read_text(f"{d}/memory.memsw.limit_in_bytes") is not None:
            swap_accounted = True
            memsw = min_up(h, "memory.memsw.limit_in_bytes")
            if memsw is not None:  # v1 limits memory+swap: swap alone is the difference
                swap_limit = max(0, memsw - (limit if limit is not None else host_total))
            memsw_use = read_int(f"{d}/memory.memsw.usage_in_bytes")
            swap_usage = max(0, (memsw_use or usage) - usage)
    elif p.v2 is not None and read_text(f"{p.v2.cgroup}/memory.current") is not None:
        h = p.v2
        limit = min_up(h, "memory.max")
        usage = read_int(f"{h.cgroup}/memory.current") or 0
        stats = flat_keyed(f"{h.cgroup}/memory.stat")
        if read_text(f"{h.cgroup}/memory.swap.max") is not None:
            swap_accounted = True
            swap_limit = min_up(h, "memory.swap.max")
            swap_usage = read_int(f"{h.cgroup}/memory.swap.current") or 0
    else:
        return MemFigures(host_total)
    limited = limit is not None and limit < host_total
    return MemFigures(limit if limit is not None and limited else host_total, True, limited,
                      usage, stats, swap_accounted, swap_limit, swap_usage)


def _quota_v1(h: Hierarchy) -> float | None:
    ratios = []
    for d in h.chain():
        q, per = read_int(f"{d}/cpu.cfs_quota_us"), read_int(f"{d}/cpu.cfs_period_us")
        if q is not None and per:
            ratios.append(q / per)
    return min(ratios) if ratios else None


def _quota_v2(h: Hierarchy) -> float | None:
    ratios = []
    for d in h.chain():
        parts = (read_text(f"{d}/cpu.max") or "").split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]):
            ratios.append(int(parts[0]) / int(parts[1]))
    return min(ratios) if ratios else None


@dataclass(frozen=True)
class CpuFigures:
    cpuset: tuple[int, ...]
    quota: float | None = None
    user_us: int = 0
    system_us: int = 0
    nice_us: int = 0


def _cpu(p: CgroupPaths, host: HostFacts) -> CpuFigures:
    text = None
    if "cpuset" in p.v1:
        text = read_text(f"{p.v1['cpuset'].cgroup}/cpuset.effective_cpus")
    elif p.v2 is not None:
        text = read_text(f"{p.v2.cgroup}/cpuset.cpus.effective")
    try:
        cpus = parse_cpulist(text) if text and text.strip() else ()
    except ValueError:
        cpus = ()
    online = set(host.online)
    cpuset = tuple(c for c in cpus if c in online) or host.online
    quota = None
    if "cpu" in p.v1:
        quota = _quota_v1(p.v1["cpu"])
    elif p.v2 is not None:
        quota = _quota_v2(p.v2)
    if "cpuacct" in p.v1:
        d = p.v1["cpuacct"].cgroup
        user, system = read_int(f"{d}/cpuacct.usage_user"), read_int(f"{d}/cpuacct.usage_sys")
        if user is None or system is None:  # older kernels: ticks only
            st = flat_keyed(f"{d}/cpuacct.stat")
            tick_us = 1_000_000 // host.clk_tck
            return CpuFigures(cpuset, quota, st.get("user", 0) * tick_us,
                              st.get("system", 0) * tick_us)
        return CpuFigures(cpuset, quota, user // 1000, system // 1000)
    if p.v2 is not None:
        # cpu.stat is there without the cpu controller too; its user time includes nice.
        st = flat_keyed(f"{p.v2.cgroup}/cpu.stat")
        nice = st.get("nice_usec", 0)
        return CpuFigures(cpuset, quota, max(0, st.get("user_usec", 0) - nice),
                          st.get("system_usec", 0), nice)
    return CpuFigures(cpuset, quota)


def timens_boot(text: str | None) -> float | None:
    """When a time namespace "booted" (seconds after the host's boot): minus its boottime
    offset (/proc/<pid>/timens_offsets); None when it has none (the host's namespace, or
    an offset that does not move boot forward)."""
    for line in (text or "").splitlines():
        f = line.split()
        if len(f) == 3 and f[0] in ("boottime", "7"):
            try:
                off = int(f[1]) + int(f[2]) / 1e9
            except ValueError:
                return None
            return -off if off < 0 else None
    return None


def start_of(proc: str, pid: int, clk_tck: int) -> float | None:
    """Seconds after boot that the container of `pid` started: minus the boottime offset
    of its time namespace when it has one (then /proc/uptime, sysinfo(2), btime and
    every /proc/<pid>/stat start time the kernel shows in it count from there, and so
    do ours), else when `pid` started (field 22 of its stat)."""
    boot = timens_boot(read_text(f"{proc}/{pid}/timens_offsets"))
    if boot is not None:
        return boot
    text = read_text(f"{proc}/{pid}/stat")
    if text is None or ")" not in text:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    try:
        return int(fields[19]) / clk_tck
    except (IndexError, ValueError):
        return None


ALL = frozenset({"memory", "cpu", "pids", "io", "tasks"})


def read_snapshot(paths: CgroupPaths, host: HostFacts, *, init_pid: int | None = None,
                  proc: str = "/proc", parts: frozenset[str] = ALL,
                  boot: float | None = None, ns_last_pid: int | None = None
                  ) -> CgroupSnapshot:
    """Everything the renderers need (or only `parts` of it: sysinfo(2) wants memory and
    pids); `proc` is where `/proc/<pid>` files are read. `boot` is when the container
    booted if the caller knows better than its init's start time (minus the boot-time
    offset of its time namespace). `ns_last_pid` is /proc/sys/kernel/ns_last_pid read in
    the container's pid namespace (through the namespace executor): exact, where the
    highest live pid the task count finds goes down when that process exits."""
    host_total = host.mem_kb("MemTotal") * 1024
    mem = _memory(paths, host_total) if "memory" in parts else MemFigures(host_total)
    cpu = _cpu(paths, host) if "cpu" in parts else CpuFigures(host.online)
    pids = None
    if "pids" in parts and "pids" in paths.v1:
        pids = read_int(f"{paths.v1['pids'].cgroup}/pids.current")
    elif "pids" in parts and paths.v2 is not None:
        pids = read_int(f"{paths.v2.cgroup}/pids.current")
    return CgroupSnapshot(
        layout=paths.layout, mem_limit=mem.limit, mem_accounted=mem.accounted,
        mem_limited=mem.limited, mem_usage=mem.usage, mem_stats=mem.stats,
        swap_accounted=mem.swap_accounted, swap_limit=mem.swap_limit,
        swap_usage=mem.swap_usage, cpuset=cpu.cpuset, cpu_quota=cpu.quota,
        cpu_user_us=cpu.user_us, cpu_system_us=cpu.system_us, cpu_nice_us=cpu.nice_us,
        pids_current=pids, io=iostat.read(paths) if "io" in parts else {},
        start=boot if boot is not None else (
            start_of(proc, init_pid, host.clk_tck) if init_pid is not None else None),
        tasks=_tasks(paths, proc, init_pid, ns_last_pid) if "tasks" in parts else None,
    )


def _tasks(paths: CgroupPaths, proc: str, init_pid: int | None,
           ns_last_pid: int | None) -> tasks.TaskSummary:
    summary = tasks.summarize(paths, proc, init_pid)
    if ns_last_pid is not None:
        return dataclasses.replace(summary, last_pid=ns_last_pid)
    return summary
