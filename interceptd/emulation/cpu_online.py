"""/sys/devices/system/cpu/{online,possible,present}: CPUs 0..n-1 of the container's n.

All three show the same list: a container is given no way to bring a CPU online, so what
it may use is all there is for it (glibc's get_nprocs_conf counts `possible`)."""

from __future__ import annotations

from interceptd.emulation.hostfacts import HostFacts, format_cpulist
from interceptd.emulation.snapshot import CgroupSnapshot

FILES = ("online", "possible", "present")


def render(snap: CgroupSnapshot, host: HostFacts, now: float) -> bytes:
    return (format_cpulist(tuple(range(len(snap.cpus)))) + "\n").encode()
