"""/proc/swaps: the header alone when the container has no swap, else one line for the
swap its limit gives it (the kernel's layout: name padded to 40, sizes in kB)."""

from __future__ import annotations

from interceptd.emulation.hostfacts import HostFacts
from interceptd.emulation.memview import HostMem, memview
from interceptd.emulation.snapshot import CgroupSnapshot

HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
NAME = "none"  # no device or file of the container's own backs it
PRIORITY = -2  # what the kernel gives the first swap area without a priority


def swap_line(name: str, size_kb: int, used_kb: int, prio: int) -> str:
    pad = " " * (40 - len(name) if len(name) < 40 else 1)
    size_tab = "\t" if size_kb < 10000000 else ""
    used_tab = "\t" if used_kb < 10000000 else ""
    return f"{name}{pad}partition\t{size_kb}\t{size_tab}{used_kb}\t{used_tab}{prio}\n"


def render(snap: CgroupSnapshot, host: HostFacts, now: float) -> bytes:
    v = memview(snap, HostMem.of(host))
    if v.swap_total == 0:
        return HEADER.encode()
    used = (v.swap_total - v.swap_free) >> 10
    return (HEADER + swap_line(NAME, v.swap_total >> 10, used, PRIORITY)).encode()
