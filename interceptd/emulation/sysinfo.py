"""sysinfo(2) emulation: the container's uptime, memory, swap and process count.

Pure: `render_snapshot` turns the container's cgroup snapshot (snapshot.py, the one
shared with its emulated /proc/meminfo and /proc/uptime, so all three agree) into the bytes
of `struct sysinfo` (x86_64, 112 bytes, mem_unit 1). The figures are gathered by
handlers/sysinfo.py: the host's own sysinfo (load averages, totals used as a ceiling when
the container is unlimited), the container init's start time, and its memory and pids
cgroups (v1, v2 or hybrid).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from interceptd.emulation.cpuview import container_uptime
from interceptd.emulation.memview import HostMem, memview
from interceptd.emulation.snapshot import CgroupSnapshot

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
class CgroupMemory:
    limit: int | None  # None: unlimited
    usage: int
    shmem: int = 0
    swap_limit: int | None = None  # swap alone (not mem+swap); None: unknown/unlimited
    swap_usage: int = 0


@dataclass(frozen=True)
class Sysinfo:
    """struct sysinfo's figures, memory in bytes (mem_unit 1): the container's view, or
    the host's own (its ceiling when the container is unlimited)."""

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


def render_snapshot(snap: CgroupSnapshot, host: Sysinfo, now: float,
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
        uptime=math.ceil(container_uptime(snap, now)),  # do_sysinfo rounds up
        loads=host.loads if loads is None else loads,
        totalram=mv.total, freeram=min(mv.free, mv.total), sharedram=mv.shared,
        bufferram=mv.buffers, totalswap=mv.swap_total,
        freeswap=min(mv.swap_free, mv.swap_total),
        procs=host.procs if procs is None else procs,
    )


def render(host: Sysinfo, uptime: int, mem: CgroupMemory | None, procs: int | None) -> Sysinfo:
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
