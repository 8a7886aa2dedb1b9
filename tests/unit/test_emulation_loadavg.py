"""loadavg: the kernel's fixed-point averages over the container's own tasks."""

from __future__ import annotations

import math

from interceptd.emulation import loadavg as la
from tests.unit.emulation_data import load


def test_one_sample_of_one_task_is_the_kernels_0_08():
    s = la.sample(la.LoadState(), 1, 5.0)
    assert s.avenrun == (164, 34, 11)  # calc_load(0, EXP_n, 1 << 11), rounded up
    assert [la.fmt(x) for x in s.avenrun] == ["0.08", "0.02", "0.01"]


def test_converges_like_the_exponential_it_approximates():
    s = la.LoadState()
    for i in range(12):  # one minute of two busy tasks
        s = la.sample(s, 2, 5.0 * (i + 1))
    assert abs(s.avenrun[0] / la.FIXED_1 - 2 * (1 - math.exp(-1))) < 0.02
    for i in range(2000):
        s = la.sample(s, 2, 60.0 + 5.0 * i)
    assert [la.fmt(x) for x in s.avenrun] == ["2.00", "2.00", "2.00"]
    for i in range(2000):
        s = la.sample(s, 0, 10060.0 + 5.0 * i)
    assert [la.fmt(x) for x in s.avenrun] == ["0.00", "0.00", "0.00"]


def test_catch_up_folds_missed_periods():
    s = la.LoadState((0, 0, 0), at=100.0)
    assert la.catch_up(s, 1, 131.0) == la.LoadState(
        la.sample(la.sample(la.sample(la.sample(la.sample(la.sample(
            s, 1, 131.0), 1, 131.0), 1, 131.0), 1, 131.0), 1, 131.0), 1, 131.0).avenrun,
        131.0)
    first = la.catch_up(la.LoadState(), 1, 7.0)
    assert first == la.sample(la.LoadState(), 1, 7.0)
    far = la.catch_up(la.LoadState((0, 0, 0), at=1.0), 3, 1e9)
    assert far.at == 1e9  # bounded work however long the gap


def test_render_counts_the_containers_tasks():
    snap, host, now = load("v2-swap")  # 3 threads: one R, one D, last pid 8
    state = la.LoadState((2048, 1024, 512), now)
    assert la.render(snap, host, now, state) == b"1.00 0.50 0.25 1/3 8\n"
    assert la.render(snap, host, now) == b"0.00 0.00 0.00 1/3 8\n"
    assert la.sysinfo_loads(state) == (65536, 32768, 16384)
