"""The container's memory and swap totals, shared by /proc/meminfo, /proc/swaps and
sysinfo(2) so the three always agree."""

from __future__ import annotations

from dataclasses import dataclass

from interceptd.emulation.hostfacts import HostFacts
from interceptd.emulation.snapshot import CgroupSnapshot


@dataclass(frozen=True)
class HostMem:
    """The host's figures in bytes (from /proc/meminfo or from sysinfo(2))."""

    total: int
    free: int
    available: int
    buffers: int
    cached: int
    shared: int
    swap_total: int
    swap_free: int

    @classmethod
    def of(cls, host: HostFacts) -> HostMem:
        kb = host.mem_kb
        return cls(kb("MemTotal") << 10, kb("MemFree") << 10,
                   kb("MemAvailable", kb("MemFree")) << 10, kb("Buffers") << 10,
                   kb("Cached") << 10, kb("Shmem") << 10, kb("SwapTotal") << 10,
                   kb("SwapFree") << 10)


@dataclass(frozen=True)
class MemView:
    """Bytes, as the container is shown them."""

    total: int
    free: int
    available: int
    buffers: int
    cached: int
    shared: int
    swap_total: int
    swap_free: int


def memview(snap: CgroupSnapshot, host: HostMem) -> MemView:
    if not snap.mem_accounted:
        return MemView(host.total, host.free, host.available, host.buffers, host.cached,
                       host.shared, host.swap_total, host.swap_free)
    st = snap.mem_stats
    total = min(snap.mem_limit, host.total)
    # Free is what the limit leaves, but never more than the host has: a limited
    # container on a full host cannot get its headroom either.
    free = max(0, min(total - snap.mem_usage, host.free))
    reclaimable = (st.get("active_file", 0) + st.get("inactive_file", 0)
                   + st.get("slab_reclaimable", 0))
    own = max(0, total - snap.mem_usage) + reclaimable
    available = max(free, min(own, host.available, total))
    swap_total, swap_free = _swap(snap, host)
    return MemView(total, free, available, 0, min(st.get("file", 0), total),
                   min(st.get("shmem", 0), total), swap_total, swap_free)


def _swap(snap: CgroupSnapshot, host: HostMem) -> tuple[int, int]:
    if host.swap_total == 0:
        return 0, 0  # swap is off on the host: nobody can swap
    if not snap.swap_accounted:
        # The kernel does not count this cgroup's swap: a limited container is shown
        # none (its use is unknowable), an unlimited one the host's.
        return (0, 0) if snap.mem_limited else (host.swap_total, host.swap_free)
    limit = host.swap_total if snap.swap_limit is None else snap.swap_limit
    total = min(limit, host.swap_total)
    return total, max(0, min(total - snap.swap_usage, host.swap_free))
