"""sysinfo(2) emulation: the container's uptime, memory, swap and process count.

`render` is pure: it turns numbers into the bytes of `struct sysinfo` (x86_64, 112 bytes,
mem_unit 1). `gather` reads them from the host: the host's own sysinfo (load averages,
totals used as a ceiling when the container is unlimited), the container init's start
time, and its memory and pids cgroups (v1 or v2).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import struct
from dataclasses import dataclass

# long uptime; ulong loads[3]; ulong totalram, freeram, sharedram, bufferram, totalswap,
# freeswap; ushort procs, pad; (4 bytes padding) ulong totalhigh, freehigh; uint mem_unit;
# padding to 8.
SYSINFO = struct.Struct("<q3Q6QHH4x2QI4x")
assert SYSINFO.size == 112

UNLIMITED = 1 << 62  # cgroup v1 "no limit" is 0x7FFFFFFFFFFFF000


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


def render(host: HostInfo, uptime: int, mem: CgroupMemory | None, procs: int | None) -> Sysinfo:
    """The container's view; falls back to the host's figure for anything unlimited."""
    if mem is None or mem.limit is None or mem.limit >= host.totalram:
        # Unlimited: the host's memory is what the container can get.
        total, free = host.totalram, host.freeram
    else:
        total = mem.limit
        free = max(0, total - mem.usage)
    shared = min(mem.shmem, total) if mem is not None else host.sharedram
    if mem is None or (mem.limit is None and mem.swap_limit is None):
        tswap, fswap = host.totalswap, host.freeswap
    elif mem.swap_limit is None:
        tswap, fswap = 0, 0
    else:
        tswap = min(mem.swap_limit, host.totalswap)
        fswap = max(0, tswap - mem.swap_usage)
    return Sysinfo(
        uptime=max(0, uptime),
        loads=host.loads,
        totalram=total,
        freeram=min(free, total),
        sharedram=shared,
        bufferram=0 if mem is not None else host.bufferram,
        totalswap=tswap,
        freeswap=min(fswap, tswap),
        procs=host.procs if procs is None else procs,
    )


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
def _mounts() -> tuple[dict[str, str], str | None]:
    """{v1 controller: mountpoint} and the cgroup2 mountpoint, from our own mountinfo
    (read once: the host's cgroup hierarchies do not move under a running daemon)."""
    v1: dict[str, str] = {}
    v2: str | None = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            fstype, sopts = parts[sep + 1], parts[sep + 3]
            if fstype == "cgroup2" and v2 is None:
                v2 = parts[4]
            elif fstype == "cgroup":
                for o in sopts.split(","):
                    v1.setdefault(o, parts[4])
    return v1, v2


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            v = f.read().strip()
    except OSError:
        return None
    if v == "max":
        return None
    try:
        n = int(v)
    except ValueError:
        return None
    return None if n >= UNLIMITED else n


def _stat_value(path: str, *keys: str) -> int:
    """The first of `keys` in a flat-keyed stat file (stops reading there: shmem comes
    early in memory.stat)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k in keys:
                    return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _proc_cgroups(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for ctl in ctrls.split(",") if ctrls else [""]:
                out[ctl] = path
    return out


@dataclass
class Source:
    """Where one container's figures live, worked out once (its init's cgroups and start
    time do not change), so that each sysinfo(2) costs a handful of small reads."""

    init_pid: int
    start: float  # seconds since boot
    mem_dir: str | None
    mem_v1: bool
    pids_file: str | None

    @classmethod
    def of(cls, init_pid: int) -> Source:
        with open(f"/proc/{init_pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        start = int(stat[stat.rindex(")") + 2 :].split()[19]) / os.sysconf("SC_CLK_TCK")
        v1, v2 = _mounts()
        cg = _proc_cgroups(init_pid)
        mem_dir = pids = None
        mem_v1 = False
        if "memory" in v1 and "memory" in cg:
            mem_dir, mem_v1 = v1["memory"] + cg["memory"], True
        elif v2 is not None and "" in cg:
            mem_dir = v2 + cg[""]
        if "pids" in v1 and "pids" in cg:
            pids = f"{v1['pids']}{cg['pids']}/pids.current"
        elif v2 is not None and "" in cg:
            pids = f"{v2}{cg['']}/pids.current"
        return cls(init_pid, start, mem_dir, mem_v1, pids)

    def memory(self) -> CgroupMemory | None:
        d = self.mem_dir
        if d is None:
            return None
        if self.mem_v1:
            usage = _read_int(f"{d}/memory.usage_in_bytes")
            if usage is None:
                return None
            limit = _read_int(f"{d}/memory.limit_in_bytes")
            memsw = _read_int(f"{d}/memory.memsw.limit_in_bytes")
            swap_limit = None
            swap_use = 0
            if memsw is not None and limit is not None:
                swap_limit = memsw - limit
                swap_use = max(0, (_read_int(f"{d}/memory.memsw.usage_in_bytes") or usage)
                               - usage)
            return CgroupMemory(limit, usage, _stat_value(f"{d}/memory.stat", "shmem"),
                                swap_limit, swap_use)
        usage = _read_int(f"{d}/memory.current")
        if usage is None:
            return None
        return CgroupMemory(
            _read_int(f"{d}/memory.max"), usage, _stat_value(f"{d}/memory.stat", "shmem"),
            _read_int(f"{d}/memory.swap.max"), _read_int(f"{d}/memory.swap.current") or 0,
        )

    def gather(self) -> Sysinfo:
        host = host_sysinfo()
        with open("/proc/uptime", encoding="ascii") as f:
            up = float(f.read().split()[0])
        mem = procs = None
        with contextlib.suppress(OSError, ValueError):
            mem = self.memory()
        if self.pids_file is not None:
            procs = _read_int(self.pids_file)
        return render(host, int(up - self.start), mem, procs)


def gather(init_pid: int) -> Sysinfo:
    return Source.of(init_pid).gather()
