"""sysinfo(2) emulation: the container's uptime, memory, swap and process count.

`render_snapshot` is pure: it turns the container's cgroup snapshot (interceptd.emulation,
shared with its emulated /proc/meminfo and /proc/uptime, so all three agree) into the bytes
of `struct sysinfo` (x86_64, 112 bytes, mem_unit 1). `gather` reads the host's own sysinfo
(load averages, totals used as a ceiling when the container is unlimited), the container
init's start time, and its memory and pids cgroups (v1, v2 or hybrid).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from interceptd.emulation import cgpaths
from interceptd.emulation.cpuview import container_uptime
from interceptd.emulation.hostfacts import HostFacts, MeminfoLine
from interceptd.emulation.memview import HostMem, memview
from interceptd.emulation.snapshot import CgroupSnapshot, read_snapshot, start_of

# long uptime; ulong loads[3]; ulong totalram, freeram, sharedram, bufferram, totalswap,
# freeswap; ushort procs, pad; (4 bytes padding) ulong totalhigh, freehigh; uint mem_unit;
# padding to 8.
SYSINFO = struct.Struct("<q3Q6QHH4x2QI4x")
assert SYSINFO.size == 112

SYSINFO_PARTS = frozenset({"memory", "pids"})
# Seconds one container's figures are reused: as fresh as its emulated /proc files
# (emulation.daemon.SNAPSHOT_TTL). A read costs ~0.2-0.6 ms of the daemon's CPU (a dozen
# cgroup files); a container calling sysinfo(2) in a loop (free, top, a runtime sizing
# its heap) took half a CPU of the daemon and, being a heavy user itself, was the first
# to wait for a CPU whenever anything else ran.
FRESH = 0.1


@dataclass(frozen=True)
class HostInfo:
    uptime: int
    loads: tuple[int, int, int]
    totalram: int  # bytes
    freeram: int
    sharedram: int
    bufferram: int
    totalswap: int
    freeswap: int
    procs: int


@dataclass(frozen=True)
class CgroupMemory:
    limit: int | None  # None: unlimited
    usage: int
    shmem: int = 0
    swap_limit: int | None = None  # swap alone (not mem+swap); None: unknown/unlimited
    swap_usage: int = 0


@dataclass(frozen=True)
class Sysinfo:
    uptime: int
    loads: tuple[int, int, int]
    totalram: int
    freeram: int
    sharedram: int
    bufferram: int
    totalswap: int
    freeswap: int
    procs: int

    def pack(self) -> bytes:
        return SYSINFO.pack(
            self.uptime, *self.loads, self.totalram, self.freeram, self.sharedram,
            self.bufferram, self.totalswap, self.freeswap, min(self.procs, 0xFFFF), 0, 0, 0, 1,
        )


def unpack(raw: bytes) -> Sysinfo:
    f = SYSINFO.unpack(raw)
    return Sysinfo(f[0], (f[1], f[2], f[3]), f[4], f[5], f[6], f[7], f[8], f[9], f[10])


def render_snapshot(snap: CgroupSnapshot, host: HostInfo, now: float,
                    loads: tuple[int, int, int] | None = None) -> Sysinfo:
    """The container's view from its snapshot: the same memory and swap figures as its
    /proc/meminfo (memview), the same uptime as its /proc/uptime (`now` is the host's
    CLOCK_BOOTTIME), its loadavg's averages when the caller keeps them."""
    hm = HostMem(host.totalram, host.freeram, host.freeram, host.bufferram, 0,
                 host.sharedram, host.totalswap, host.freeswap)
    mv = memview(snap, hm)
    procs = snap.pids_current
    if procs is None and snap.tasks is not None:
        procs = snap.tasks.threads
    return Sysinfo(
        uptime=int(container_uptime(snap, now)),
        loads=host.loads if loads is None else loads,
        totalram=mv.total, freeram=min(mv.free, mv.total), sharedram=mv.shared,
        bufferram=mv.buffers, totalswap=mv.swap_total,
        freeswap=min(mv.swap_free, mv.swap_total),
        procs=host.procs if procs is None else procs,
    )


def render(host: HostInfo, uptime: int, mem: CgroupMemory | None, procs: int | None) -> Sysinfo:
    """The container's view from bare figures; falls back to the host's for anything
    unlimited (the snapshot path's rules, for callers without a snapshot)."""
    limit = host.totalram if mem is None or mem.limit is None else min(mem.limit,
                                                                       host.totalram)
    snap = CgroupSnapshot(
        layout="v1", mem_limit=limit, mem_accounted=mem is not None,
        mem_limited=limit < host.totalram, mem_usage=mem.usage if mem else 0,
        mem_stats={"shmem": mem.shmem} if mem else {},
        swap_accounted=mem is not None and mem.swap_limit is not None,
        swap_limit=mem.swap_limit if mem else None,
        swap_usage=mem.swap_usage if mem else 0, pids_current=procs,
    )
    return render_snapshot(snap, host, float(uptime))


# --- gathering (host I/O) -------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def host_sysinfo() -> HostInfo:
    buf = ctypes.create_string_buffer(SYSINFO.size)
    if _libc.sysinfo(buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    s = unpack(buf.raw)
    unit = SYSINFO.unpack(buf.raw)[13] or 1
    return HostInfo(
        s.uptime, s.loads, s.totalram * unit, s.freeram * unit, s.sharedram * unit,
        s.bufferram * unit, s.totalswap * unit, s.freeswap * unit, s.procs,
    )


def process_uptime(pid: int, host_uptime: float | None = None) -> int:
    """Seconds since `pid` started (its start time is in clock ticks since boot)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    if host_uptime is None:
        with open("/proc/uptime", encoding="ascii") as f:
            host_uptime = float(f.read().split()[0])
    return int(host_uptime - start)


@functools.lru_cache(maxsize=1)
def _mounts() -> cgpaths.Mounts:
    """Where the host's cgroup hierarchies are mounted, from our own mountinfo (read
    once: they do not move under a running daemon)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return cgpaths.parse_mountinfo(f.read())


# init pid -> the container's load averages (sysinfo units), set by the daemon's
# emulation while it runs so that sysinfo(2) and /proc/loadavg agree; None: the host's.
loads_provider: Callable[[int], tuple[int, int, int] | None] | None = None


@dataclass
class Source:
    """Where one container's figures live, worked out once (its init's cgroups and start
    time do not change), so that each sysinfo(2) costs a handful of small reads."""

    init_pid: int
    start: float | None  # seconds since boot
    paths: cgpaths.CgroupPaths
    # (monotonic time, figures) of the last read; one worker thread per container uses it
    last: tuple[float, Sysinfo] | None = dataclasses.field(default=None, repr=False,
                                                          compare=False)

    @classmethod
    def of(cls, init_pid: int) -> Source:
        with open(f"/proc/{init_pid}/cgroup", encoding="utf-8") as f:
            paths = cgpaths.locate(cgpaths.parse_proc_cgroup(f.read()), _mounts())
        return cls(init_pid, start_of("/proc", init_pid, os.sysconf("SC_CLK_TCK")), paths)

    def snapshot(self, host: HostInfo) -> CgroupSnapshot:
        facts = HostFacts(meminfo=(MeminfoLine("MemTotal", host.totalram >> 10, True),),
                          clk_tck=os.sysconf("SC_CLK_TCK"))
        snap = read_snapshot(self.paths, facts, parts=SYSINFO_PARTS)
        return dataclasses.replace(snap, start=self.start)

    def gather(self) -> Sysinfo:
        """The container's figures, read again once they are FRESH seconds old."""
        t = time.monotonic()
        last = self.last
        if last is not None and 0 <= t - last[0] < FRESH:
            return last[1]
        info = self.read()
        self.last = (t, info)
        return info

    def read(self) -> Sysinfo:
        host = host_sysinfo()
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        provider, loads = loads_provider, None
        if provider is not None:
            try:
                loads = provider(self.init_pid)
            except OSError:  # the container is going: its cgroups are
                loads = None
        return render_snapshot(self.snapshot(host), host, now, loads)


def gather(init_pid: int) -> Sysinfo:
    return Source.of(init_pid).gather()
