"""/proc/cpuinfo: the host's blocks of the CPUs the container is shown, renumbered from 0
(`processor : i` for the i-th; the other lines, apicid and core id included, are the host
CPU's own, as LXCFS leaves them)."""

from __future__ import annotations

from interceptd.emulation.hostfacts import HostFacts
from interceptd.emulation.snapshot import CgroupSnapshot


def render(snap: CgroupSnapshot, host: HostFacts, now: float) -> bytes:
    out = []
    shown = [c for c in snap.cpus if c in host.cpuinfo]
    for i, cpu in enumerate(shown):
        out.append(f"processor\t: {i}\n{host.cpuinfo[cpu]}\n\n")
    out.extend(f"{block}\n\n" for block in host.cpuinfo_extra)
    return "".join(out).encode()
