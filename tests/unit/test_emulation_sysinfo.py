"""sysinfo(2) rendering, without a kernel."""

from __future__ import annotations

import ctypes
import os

from interceptd.emulation import sysinfo as si
from interceptd.handlers import sysinfo as gather

HOST = si.Sysinfo(
    uptime=5000, loads=(65536, 32768, 16384), totalram=8 << 30, freeram=6 << 30,
    sharedram=1 << 20, bufferram=2 << 20, totalswap=2 << 30, freeswap=1 << 30, procs=300,
)


def test_layout_matches_the_kernel_struct():
    assert si.SYSINFO.size == 112
    raw = si.Sysinfo(7, (1, 2, 3), 10, 9, 8, 7, 6, 5, 4).pack()
    assert len(raw) == 112
    assert si.unpack(raw) == si.Sysinfo(7, (1, 2, 3), 10, 9, 8, 7, 6, 5, 4)
    assert int.from_bytes(raw[104:108], "little") == 1  # mem_unit


def test_limited_container_sees_its_cgroup():
    mem = si.CgroupMemory(limit=256 << 20, usage=100 << 20, shmem=4 << 20,
                          swap_limit=64 << 20, swap_usage=16 << 20)
    s = si.render(HOST, 42, mem, 3)
    assert (s.uptime, s.totalram, s.freeram) == (42, 256 << 20, 156 << 20)
    assert (s.sharedram, s.bufferram) == (4 << 20, 0)
    assert (s.totalswap, s.freeswap) == (64 << 20, 48 << 20)
    assert s.procs == 3 and s.loads == HOST.loads


def test_unlimited_falls_back_to_host():
    s = si.render(HOST, 1, si.CgroupMemory(None, 5 << 20), None)
    assert (s.totalram, s.freeram, s.procs) == (HOST.totalram, HOST.freeram, HOST.procs)
    assert (s.totalswap, s.freeswap) == (HOST.totalswap, HOST.freeswap)
    s = si.render(HOST, 1, None, 2)
    assert s.bufferram == HOST.bufferram and s.procs == 2


def test_limit_without_swap_accounting_shows_no_swap():
    s = si.render(HOST, 1, si.CgroupMemory(64 << 20, 70 << 20), 1)
    assert (s.totalram, s.freeram, s.totalswap, s.freeswap) == (64 << 20, 0, 0, 0)


def test_limit_above_host_memory_is_host_memory():
    s = si.render(HOST, 1, si.CgroupMemory(64 << 30, 1 << 20), 1)
    assert s.totalram == HOST.totalram


def test_procs_and_uptime_clamped():
    s = si.render(HOST, -5, None, 100000)
    assert s.uptime == 0 and si.unpack(s.pack()).procs == 0xFFFF


def test_host_values_match_libc_sysinfo():
    buf = ctypes.create_string_buffer(112)
    assert ctypes.CDLL(None).sysinfo(buf) == 0
    native = si.unpack(buf.raw)
    mine = gather.host_sysinfo()
    assert abs(mine.uptime - native.uptime) <= 1 and mine.totalram >= native.totalram
    assert gather.process_uptime(os.getpid()) >= 0


def test_source_of_a_process_gathers():
    src = gather.Source.of(os.getpid())
    s = src.gather()
    assert s.totalram > 0 and 0 <= s.freeram <= s.totalram and s.uptime >= 0
