"""The host's own /proc figures the renderers start from, parsed from text.

Renderers never read the host themselves: `read_host` gathers the texts once per refresh
and the parsers turn them into a `HostFacts`, so tests feed recorded files instead.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MeminfoLine:
    key: str
    value: int  # kB when `kb`, else a count (HugePages_*)
    kb: bool


@dataclass(frozen=True)
class CpuTimes:
    """One `cpu`/`cpuN` line of /proc/stat, in USER_HZ ticks."""

    user: int = 0
    nice: int = 0
    system: int = 0
    idle: int = 0
    iowait: int = 0
    irq: int = 0
    softirq: int = 0
    steal: int = 0
    guest: int = 0
    guest_nice: int = 0

    def fields(self) -> tuple[int, ...]:
        return (self.user, self.nice, self.system, self.idle, self.iowait, self.irq,
                self.softirq, self.steal, self.guest, self.guest_nice)


@dataclass(frozen=True)
class HostFacts:
    meminfo: tuple[MeminfoLine, ...] = ()
    cpuinfo: dict[int, str] = field(default_factory=dict)  # cpu -> block after its first line
    cpuinfo_extra: tuple[str, ...] = ()  # blocks that describe no processor (kept at the end)
    stat_cpus: dict[int, CpuTimes] = field(default_factory=dict)
    stat_passthrough: tuple[str, ...] = ()  # intr, ctxt, softirq lines: no cgroup equivalent
    btime: int = 0  # wall-clock seconds of the host's boot
    uptime: float = 0.0
    disks: dict[tuple[int, int], str] = field(default_factory=dict)  # (major, minor) -> name
    online: tuple[int, ...] = (0,)
    swap_kb: int = 0  # host SwapTotal
    clk_tck: int = 100

    @functools.cached_property
    def _mem(self) -> dict[str, int]:
        return {m.key: m.value for m in self.meminfo}

    def mem_kb(self, key: str, default: int = 0) -> int:
        return self._mem.get(key, default)


def parse_cpulist(text: str) -> tuple[int, ...]:
    """"0-3,5\\n" -> (0, 1, 2, 3, 5); the kernel's cpulist format."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        first = int(lo)
        last = int(hi) if sep else first
        if last < first or last - first > 65536:
            raise ValueError(f"bad cpu range {part!r}")
        out.update(range(first, last + 1))
    return tuple(sorted(out))


def format_cpulist(cpus: tuple[int, ...]) -> str:
    """The inverse of parse_cpulist, as the kernel prints a mask (`%*pbl`)."""
    runs: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        runs.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(runs)


def parse_meminfo(text: str) -> tuple[MeminfoLine, ...]:
    out = []
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        out.append(MeminfoLine(key, int(parts[0]), len(parts) > 1 and parts[1] == "kB"))
    return tuple(out)


def parse_cpuinfo(text: str) -> tuple[dict[int, str], tuple[str, ...]]:
    """Blocks separated by blank lines; a block whose first line is `processor : N` is that
    CPU's (x86, arm64, ppc64, riscv); anything else is kept whole."""
    cpus: dict[int, str] = {}
    extra: list[str] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        first, _, rest = block.partition("\n")
        key, _, val = first.partition(":")
        if key.strip() == "processor" and val.strip().isdigit():
            cpus[int(val)] = rest
        else:
            extra.append(block)
    return cpus, tuple(extra)


def parse_stat(text: str) -> tuple[dict[int, CpuTimes], tuple[str, ...], int]:
    cpus: dict[int, CpuTimes] = {}
    passthrough: list[str] = []
    btime = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            vals = [int(v) for v in rest.split()][:10]
            cpus[int(name[3:])] = CpuTimes(*vals)
        elif name == "btime":
            btime = int(rest)
        elif name in ("intr", "ctxt", "softirq"):
            passthrough.append(line)
    return cpus, tuple(passthrough), btime


def parse_diskstats(text: str) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            out[(int(parts[0]), int(parts[1]))] = parts[2]
    return out


def from_texts(*, meminfo: str, cpuinfo: str, stat: str, uptime: str, diskstats: str = "",
               online: str = "", clk_tck: int = 100) -> HostFacts:
    mem = parse_meminfo(meminfo)
    cpus, extra = parse_cpuinfo(cpuinfo)
    stat_cpus, passthrough, btime = parse_stat(stat)
    on = parse_cpulist(online) if online.strip() else tuple(sorted(stat_cpus)) or (0,)
    swap = next((m.value for m in mem if m.key == "SwapTotal"), 0)
    return HostFacts(
        meminfo=mem, cpuinfo=cpus, cpuinfo_extra=extra, stat_cpus=stat_cpus,
        stat_passthrough=passthrough, btime=btime, uptime=float(uptime.split()[0]),
        disks=parse_diskstats(diskstats), online=on, swap_kb=swap, clk_tck=clk_tck,
    )


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_host(proc: str = "/proc", sysfs: str = "/sys") -> HostFacts:
    return from_texts(
        meminfo=_read(f"{proc}/meminfo"), cpuinfo=_read(f"{proc}/cpuinfo"),
        stat=_read(f"{proc}/stat"), uptime=_read(f"{proc}/uptime"),
        diskstats=_read(f"{proc}/diskstats"),
        online=_read(f"{sysfs}/devices/system/cpu/online"),
        clk_tck=os.sysconf("SC_CLK_TCK"),
    )
