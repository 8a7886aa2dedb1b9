"""sysinfo(2), answered with the container's figures: gathered here (the host's own
sysinfo, the init's start time, its memory and pids cgroups), rendered by emulation/sysinfo.py."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from interceptd.emulation import cgpaths
from interceptd.emulation.hostfacts import HostFacts, MeminfoLine
from interceptd.emulation.snapshot import CgroupSnapshot, read_snapshot, start_of
from interceptd.emulation.sysinfo import (
    FRESH,
    SYSINFO,
    SYSINFO_PARTS,
    Sysinfo,
    render_snapshot,
    unpack,
)
from interceptd.handlers import scope
from interceptd.kernel.libc import check, libc
from interceptd.kernel.procinfo import start_ticks
from interceptd.kernel.targetmem import write_target
from interceptd.seams import Request
from interceptd.syscalls import nr
from interceptd.verdict import Verdict

NR_SYSINFO = nr("sysinfo")


def handle_sysinfo(req: Request) -> Verdict:
    addr = req.args[0]
    st = scope.state_of(req.container)
    if st.sysinfo is None:
        st.sysinfo = Source.of(req.container.init_pid)
    src = st.sysinfo
    info = src.gather()
    raw = info.pack()
    publish(req, src, raw)
    err = write_target(req.pid, addr, raw, req.valid)
    if err:
        return Verdict.errno(err, "sysinfo: bad buffer")
    return Verdict.value(0, f"sysinfo emulated [uptime={info.uptime} "
                            f"totalram={info.totalram} procs={info.procs}]")


def publish(req: Request, src: Source, raw: bytes) -> None:
    """Hand the figures to the C core, which answers the container's next sysinfo(2)
    calls itself (csrc/canned.c) until they are FRESH seconds old, counted from when
    they were read: the staleness bound is the same as this path's. The call that
    finds them stale comes here again, reads the cgroups and publishes anew."""
    ch = req.container.channel
    last = src.last
    if ch is None or last is None:
        return
    left = FRESH - (time.monotonic() - last[0])
    if left <= 0:
        return
    try:
        ch.set_sysinfo(raw, left)
        # Every time (a C call, on at most ~1/FRESH calls a second): a rule table reset
        # by a reload would otherwise keep every later call on this path.
        ch.set_rule(NR_SYSINFO, req.core.ACT_SYSINFO)
        src.published = True
    except OSError:  # a channel closed meanwhile
        src.published = False


def host_sysinfo() -> Sysinfo:
    buf = ctypes.create_string_buffer(SYSINFO.size)
    check(libc.sysinfo(buf), "sysinfo")
    s = unpack(buf.raw)
    unit = SYSINFO.unpack(buf.raw)[13] or 1
    return Sysinfo(
        s.uptime, s.loads, s.totalram * unit, s.freeram * unit, s.sharedram * unit,
        s.bufferram * unit, s.totalswap * unit, s.freeswap * unit, s.procs,
    )


def process_uptime(pid: int, host_uptime: float | None = None) -> int:
    """Seconds since `pid` started (its start time is in clock ticks since boot)."""
    start = start_ticks(pid) / os.sysconf("SC_CLK_TCK")
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
    published: bool = dataclasses.field(default=False, repr=False, compare=False)

    @classmethod
    def of(cls, init_pid: int) -> Source:
        with open(f"/proc/{init_pid}/cgroup", encoding="utf-8") as f:
            paths = cgpaths.locate(cgpaths.parse_proc_cgroup(f.read()), _mounts())
        return cls(init_pid, start_of("/proc", init_pid, os.sysconf("SC_CLK_TCK")), paths)

    def snapshot(self, host: Sysinfo) -> CgroupSnapshot:
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
    """One container's figures, without keeping its Source."""
    return Source.of(init_pid).gather()
