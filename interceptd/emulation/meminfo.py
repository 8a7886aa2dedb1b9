"""/proc/meminfo: the host's lines in the host's order, the container's figures where its
memory cgroup has one, the host's line where no cgroup counter exists (CommitLimit,
Vmalloc*, HugePages_*, DirectMap*: host-wide by nature, as LXCFS shows them too)."""

from __future__ import annotations

from interceptd.emulation.hostfacts import HostFacts
from interceptd.emulation.memview import HostMem, memview
from interceptd.emulation.snapshot import CgroupSnapshot

# meminfo key -> v2 memory.stat keys summed (v1's are mapped to these in snapshot.py).
FROM_STATS: dict[str, tuple[str, ...]] = {
    "SwapCached": ("swapcached",),
    "Active": ("active_anon", "active_file"),
    "Inactive": ("inactive_anon", "inactive_file"),
    "Active(anon)": ("active_anon",),
    "Inactive(anon)": ("inactive_anon",),
    "Active(file)": ("active_file",),
    "Inactive(file)": ("inactive_file",),
    "Unevictable": ("unevictable",),
    "Zswap": ("zswap",),
    "Zswapped": ("zswapped",),
    "Dirty": ("file_dirty",),
    "Writeback": ("file_writeback",),
    "AnonPages": ("anon",),
    "Mapped": ("file_mapped",),
    "KReclaimable": ("slab_reclaimable",),
    "Slab": ("slab_reclaimable", "slab_unreclaimable"),
    "SReclaimable": ("slab_reclaimable",),
    "SUnreclaim": ("slab_unreclaimable",),
    "KernelStack": ("kernel_stack",),
    "PageTables": ("pagetables",),
    "SecPageTables": ("sec_pagetables",),
    "Percpu": ("percpu",),
    "AnonHugePages": ("anon_thp",),
    "ShmemHugePages": ("shmem_thp",),
    "FileHugePages": ("file_thp",),
}
ZERO = ("Mlocked", "ShmemPmdMapped", "FilePmdMapped", "Bounce", "NFS_Unstable",
        "WritebackTmp")


def line(key: str, value: int, kb: bool = True) -> str:
    """The kernel's show_val_kb: the label padded to 16, the number to 8."""
    return f"{key + ':':<16}{value:>8}{' kB' if kb else ''}\n"


def values_kb(snap: CgroupSnapshot, host: HostFacts) -> dict[str, int]:
    """The lines the container's cgroup decides, in kB."""
    v = memview(snap, HostMem.of(host))
    out = {
        "MemTotal": v.total >> 10, "MemFree": v.free >> 10,
        "MemAvailable": v.available >> 10, "Buffers": v.buffers >> 10,
        "Cached": v.cached >> 10, "Shmem": v.shared >> 10,
        "SwapTotal": v.swap_total >> 10, "SwapFree": v.swap_free >> 10,
    }
    if not snap.mem_accounted:
        return out
    for key, stat_keys in FROM_STATS.items():
        out[key] = sum(snap.mem_stats.get(k, 0) for k in stat_keys) >> 10
    if "slab" in snap.mem_stats and "slab_reclaimable" not in snap.mem_stats:
        out["Slab"] = snap.mem_stats["slab"] >> 10
    for key in ZERO:
        out[key] = 0
    return out


def render(snap: CgroupSnapshot, host: HostFacts, now: float) -> bytes:
    vals = values_kb(snap, host)
    return "".join(
        line(m.key, vals.get(m.key, m.value), m.kb) for m in host.meminfo
    ).encode()
