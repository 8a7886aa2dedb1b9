"""One container cannot slow every other (issue 8, item 11): a sibling's notified-call
latency (sysinfo, answered by the daemon's Python path) stays near its quiet value while
one neighbour hammers process_vm_readv and bind mount/umount and another loops
unshare -Um + mount (a new executor each time), through the same daemon.

Robust on a busy 2-core VM: quiet and loaded rounds alternate (drift on the machine hits
both), and each phase's p99 is taken over all its rounds' samples pooled."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import pytest

from tests.harness import Runtime
from tests.integration.policy_support import privileged

pytestmark = pytest.mark.integration

N = 800  # sysinfo calls per round
GAP_US = 500  # between two calls: a container using the daemon, not hammering it
GUARD = 10  # see the last assertion
ROUNDS = 3  # alternating quiet and loaded rounds
LOAD_SECONDS = 5.0  # per loaded round: the sibling samples in ~2-3 s under load, with margin
LOADS = (("hammer", ["vmread"]), ("hammer", ["mounts", "/mnt/a"]), ("unshare", ["unshare"]))


def samples(rt: Runtime, cid: str) -> list[float]:
    res = rt.exec(cid, ["fairness", "lat", str(N), str(GAP_US)], timeout=60)
    m = re.search(r"lat n=(\d+) ok=(\d+)", res.stdout)
    got = re.search(r"^samples (\S+)$", res.stdout, re.M)
    assert res.rc == 0 and m and got, (res.stdout[-500:], res.stderr)
    assert m.group(1) == m.group(2) == str(N), m.group(0)  # every call answered
    return [float(x) for x in got.group(1).split(",")]


def p99(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.99)]


def load(rt: Runtime, cids: dict[str, str],
         out: dict[str, list[int]]) -> list[threading.Thread]:
    def run(cid: str, kind: str, *rest: str) -> None:
        res = rt.exec(cid, ["fairness", kind, str(LOAD_SECONDS), *rest],
                      timeout=LOAD_SECONDS + 60)
        m = re.search(rf"{kind} n=(\d+) ok=(\d+)", res.stdout)
        assert m, (kind, res.rc, res.stdout, res.stderr)
        out.setdefault(kind, []).append(int(m.group(2)))

    threads = [threading.Thread(target=run, args=(cids[who], *a), daemon=True)
               for who, a in LOADS]
    for t in threads:
        t.start()
    return threads


@pytest.mark.parametrize("runtime_name", ["runc", "crun"])
def test_a_noisy_neighbour_does_not_slow_a_sibling(
        runtime_name: str, runtime_factory: Callable[[str], Runtime], bundle_factory,
        daemon, new_id) -> None:
    rt = runtime_factory(runtime_name)
    quiet_b = privileged(bundle_factory, daemon, "sleep 1000")
    hammer_b = privileged(bundle_factory, daemon, "mkdir -p /mnt/a && sleep 1000")
    unshare_b = privileged(bundle_factory, daemon, "sleep 1000")
    with rt.started(quiet_b, new_id("quiet")) as quiet, \
            rt.started(hammer_b, new_id("hammer")) as hammer, \
            rt.started(unshare_b, new_id("unshare")) as unsharer:
        samples(rt, quiet)  # warm: policy state, first wake-ups
        alone: list[float] = []
        loaded: list[float] = []
        done: dict[str, list[int]] = {}
        for _ in range(ROUNDS):
            alone += samples(rt, quiet)
            threads = load(rt, {"hammer": hammer, "unshare": unsharer}, done)
            t0 = time.monotonic()
            time.sleep(0.7)  # the loads have started and are spinning
            loaded += samples(rt, quiet)
            busy_for = time.monotonic() - t0
            for t in threads:
                t.join(timeout=LOAD_SECONDS + 90)
            assert busy_for < LOAD_SECONDS, "the loaded round outlasted the load"
        base, busy = p99(alone), p99(loaded)
        print(f"{runtime_name}: sibling p99 {base:.0f} us alone, {busy:.0f} us loaded; "
              f"p50 {sorted(alone)[len(alone) // 2]:.0f} / "
              f"{sorted(loaded)[len(loaded) // 2]:.0f} us; neighbours' calls {done}")
        # The neighbours really kept the daemon busy with vetted calls, in every round.
        assert all(len(done.get(a[0], [])) == ROUNDS for _, a in LOADS), done
        assert sum(done["vmread"]) > 1000 and sum(done["mounts"]) > 300, done
        assert sum(done["unshare"]) > 20, done
        # The target is 2x, printed here and by bench/bench_fairness.py per load
        # (PASS/MISS). On a shared 2-vCPU VM the quiet p99 alone moves 1.4-5 ms with
        # whatever else runs, and one machine stall in a loaded round decides its p99:
        # with the machine's load average at 5-11 this test measured 0.8, 2.0, 4.5 and
        # 7.2x (a probe of the same loads in between: 0.8x). So the gate stays loose; it
        # catches what the fairness work removed (3.4-4.1x on a quiet machine before the
        # sysinfo figures were reused and the share counted in CPU time; a neighbour's
        # /proc walks, executor thrash and daemon forks once made it 15-25x).
        assert busy <= GUARD * base, f"sibling p99 {base:.0f} us alone, {busy:.0f} us loaded"
