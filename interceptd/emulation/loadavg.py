"""/proc/loadavg of the container's own tasks, with the kernel's arithmetic.

The kernel samples nr_running + nr_uninterruptible every LOAD_FREQ (5 s) and folds it into
three fixed-point exponential averages (calc_load). `sample` is that fold, on the count
of the container's R and D threads; the daemon calls it every SAMPLE_SECONDS per
container and keeps the `LoadState`. Where it differs from the kernel: the kernel samples
per CPU in the scheduler tick, so a task that runs and sleeps between samples is seen by
chance in both; here a sample is one reading of the threads' states, and periods the
daemon missed (stopped, busy) are folded with the current count (`catch_up`) as the
kernel's NO_HZ path folds idle periods.
"""

from __future__ import annotations

from dataclasses import dataclass

from interceptd.emulation.hostfacts import HostFacts
from interceptd.emulation.snapshot import CgroupSnapshot

FSHIFT = 11
FIXED_1 = 1 << FSHIFT
EXP = (1884, 2014, 2037)  # 1/exp(5s/1min), 5 min, 15 min in fixed point
SAMPLE_SECONDS = 5.0
MAX_CATCH_UP = 720  # one hour of missed samples: after that the averages are settled


@dataclass(frozen=True)
class LoadState:
    avenrun: tuple[int, int, int] = (0, 0, 0)  # fixed point, FSHIFT bits of fraction
    at: float = 0.0  # CLOCK_BOOTTIME of the last sample


def calc_load(load: int, exp: int, active: int) -> int:
    new = load * exp + active * (FIXED_1 - exp)
    if active >= load:
        new += FIXED_1 - 1
    return new // FIXED_1


def sample(state: LoadState, active_tasks: int, now: float) -> LoadState:
    active = max(0, active_tasks) * FIXED_1
    loads = tuple(calc_load(a, e, active) for a, e in zip(state.avenrun, EXP, strict=True))
    return LoadState((loads[0], loads[1], loads[2]), now)


def catch_up(state: LoadState, active_tasks: int, now: float) -> LoadState:
    """Fold every whole period since the last sample (at least one)."""
    periods = int((now - state.at) // SAMPLE_SECONDS) if state.at else 1
    for _ in range(max(1, min(periods, MAX_CATCH_UP))):
        state = sample(state, active_tasks, now)
    return state


def fmt(avg: int) -> str:
    avg += FIXED_1 // 200  # the kernel rounds to hundredths this way
    whole, frac = avg >> FSHIFT, ((avg & (FIXED_1 - 1)) * 100) >> FSHIFT
    return f"{whole}.{frac:02d}"


def sysinfo_loads(state: LoadState) -> tuple[int, int, int]:
    """The same averages as sysinfo(2) gives them (SI_LOAD_SHIFT 16)."""
    a, b, c = (x << (16 - FSHIFT) for x in state.avenrun)
    return a, b, c


def render_state(snap: CgroupSnapshot, state: LoadState) -> bytes:
    t = snap.tasks
    running = max(1, t.running) if t is not None else 1  # the reader is running
    threads = t.threads if t is not None else (snap.pids_current or 1)
    last = t.last_pid if t is not None else 0
    a, b, c = (fmt(x) for x in state.avenrun)
    return f"{a} {b} {c} {running}/{max(threads, running)} {last}\n".encode()


def render(snap: CgroupSnapshot, host: HostFacts, now: float,
           state: LoadState | None = None) -> bytes:
    return render_state(snap, state or LoadState())
