"""Per-device I/O counters of a cgroup: v1 blkio.throttle.* or v2 io.stat."""

from __future__ import annotations

import os
from dataclasses import dataclass

from interceptd.emulation.cgpaths import CgroupPaths


@dataclass(frozen=True)
class IoStat:
    rbytes: int = 0
    wbytes: int = 0
    rios: int = 0
    wios: int = 0
    dbytes: int = 0
    dios: int = 0


def _dev(text: str) -> tuple[int, int] | None:
    major, sep, minor = text.partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def parse_v1(service_bytes: str, serviced: str) -> dict[tuple[int, int], IoStat]:
    """blkio.throttle.io_service_bytes(_recursive) and io_serviced(_recursive):
    `MAJ:MIN Read|Write|Sync|Async|Discard|Total N` lines and a final `Total N`."""
    acc: dict[tuple[int, int], dict[str, int]] = {}
    for text, suffix in ((service_bytes, "bytes"), (serviced, "ios")):
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[2].isdigit():
                continue
            dev = _dev(parts[0])
            op = {"Read": "r", "Write": "w", "Discard": "d"}.get(parts[1])
            if dev is None or op is None:
                continue
            acc.setdefault(dev, {})[op + suffix] = int(parts[2])
    return {dev: IoStat(**vals) for dev, vals in acc.items()}


def parse_v2(io_stat: str) -> dict[tuple[int, int], IoStat]:
    """io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`."""
    out: dict[tuple[int, int], IoStat] = {}
    known = set(IoStat.__dataclass_fields__)
    for line in io_stat.splitlines():
        parts = line.split()
        dev = _dev(parts[0]) if parts else None
        if dev is None:
            continue
        vals = {}
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            if k in known and v.isdigit():
                vals[k] = int(v)
        out[dev] = IoStat(**vals)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def read(paths: CgroupPaths) -> dict[tuple[int, int], IoStat]:
    if "blkio" in paths.v1:
        d = paths.v1["blkio"].cgroup
        for suffix in ("_recursive", ""):  # the recursive ones include nested cgroups
            b = _read(f"{d}/blkio.throttle.io_service_bytes{suffix}")
            n = _read(f"{d}/blkio.throttle.io_serviced{suffix}")
            if b is not None and n is not None:
                return parse_v1(b, n)
        return {}
    if paths.v2 is not None:
        return parse_v2(_read(f"{paths.v2.cgroup}/io.stat") or "")
    return {}


# A read limit no disk reaches (1 TiB/s). Since Linux 6.9, v1's blkio.throttle.* counters
# only move on a disk whose queue has a throttle rule somewhere (the kernel turns that
# accounting on lazily); without one a v1 container's /proc/diskstats stays empty.
UNREACHED_BPS = 1 << 40
SKIPPED_DISKS = ("loop", "ram", "zram")  # no container I/O worth showing goes there


def host_disks(sys_block: str = "/sys/block") -> list[str]:
    """`MAJ:MIN` of the host's whole disks (throttle rules take no partition)."""
    out = []
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return out
    for name in names:
        if name.startswith(SKIPPED_DISKS):
            continue
        try:
            with open(os.path.join(sys_block, name, "dev"), encoding="ascii") as f:
                dev = f.read().strip()
        except OSError:
            continue
        if _dev(dev) is not None:
            out.append(dev)
    return out


def enable_v1_accounting(paths: CgroupPaths, disks: list[str]) -> list[str]:
    """Put the unreached rule on the container's v1 blkio cgroup for each disk (it goes
    with the cgroup); returns the errors. Nothing to do without a v1 blkio hierarchy."""
    h = paths.v1.get("blkio")
    if h is None:
        return []
    errors = []
    for dev in disks:
        try:
            with open(os.path.join(h.cgroup, "blkio.throttle.read_bps_device"), "w",
                      encoding="ascii") as f:
                f.write(f"{dev} {UNREACHED_BPS}\n")
        except OSError as e:
            errors.append(f"{dev}: {e.strerror}")
    return errors
