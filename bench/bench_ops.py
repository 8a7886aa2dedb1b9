"""Operations under load (issue 14's Bench), one daemon, real runc:

- attach time per container: from `runc create` until the daemon lists the container
  (runc sends the notify fd during create), 100 containers started 8 at a time;
- the daemon's RSS with 0 and with 100 attached containers
  (target <= 100 MiB + 256 KiB per container);
- notified-call p50/p99 under 8 concurrent storms: 8 containers each timing sysfs(2)
  answered by the Python path (target: each storm's p99 <= 10x its p50; the worst is shown);
- RSS growth over 1,000 container lifecycles, or as many as fit in --lifecycle-seconds
  (4 at a time), the count printed (bound: <= 8 MiB once warm).

The daemon runs with the environment the systemd unit gives it (MALLOC_ARENA_MAX=2).
Each row prints PASS or MISS. Run alone: `.venv/bin/python bench/bench_ops.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common import OUT, REPO, ContainerEnv, Timing, build_static, table

sys.path.insert(0, str(REPO))

from tests.harness.bundle import BundleSpec
from tests.harness.daemon import Daemon, render_config
from tests.harness.fleet import HANDLERS, Fleet, rss_settled
from tests.harness.handlers import ANNOTATION

RSS_BASE_KIB = 100 * 1024
RSS_PER_CONTAINER_KIB = 256
STORM_RATIO = 10.0
LIFECYCLE_GROWTH_KIB = 8 * 1024
STORMS = 8
UNIT_ENV = {"MALLOC_ARENA_MAX": "2"}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fleet_phase(env: ContainerEnv, d: Daemon, count: int) -> dict:
    fleet = Fleet(env.runtime, d, env.bundle, f"ops-fleet-{int(time.time())}")
    ids = fleet.prepare(count)
    try:
        fleet.start(ids)
        attached = len(fleet.attached() & set(ids))
        rss = rss_settled(d.pid)
        slow = fleet.wait_rounds(ids, 1, 30)
        wrong = sum(1 for c in ids if fleet.answers(c)[1])
    finally:
        fleet.stop()
    deadline = time.monotonic() + 30
    while d.control("status")["containers"] and time.monotonic() < deadline:
        time.sleep(0.2)
    times = [t * 1000 for t in fleet.attach_s.values()]
    return {"attached": attached, "rss_kib": rss, "unanswered": len(slow), "wrong": wrong,
            "attach_p50_ms": statistics.median(times), "attach_p99_ms": pct(times, 0.99)}


def storm_phase(env: ContainerEnv, d: Daemon, calls: int) -> list[Timing]:
    bundles = [env.bundle(BundleSpec(
        args=["syscall_loop", "-n", str(calls), "-w", "500"], notify=["sysfs"],
        listener_path=d.listener_path, annotations={ANNOTATION: f"value:{700 + i}"}))
        for i in range(STORMS)]
    start = threading.Barrier(STORMS)

    def one(i: int) -> Timing:
        start.wait()
        res = env.runtime.run(bundles[i], f"ops-storm-{i}-{int(time.time())}", timeout=300)
        if res.rc != 0:
            raise RuntimeError(f"storm {i} failed: {res.stdout} {res.stderr}")
        t = Timing.parse(res.stdout)
        if (t.ret, t.errno) != (700 + i, 0):
            raise RuntimeError(f"storm {i} got ret={t.ret} errno={t.errno}")
        return t

    with ThreadPoolExecutor(STORMS) as pool:
        return list(pool.map(one, range(STORMS)))


def lifecycle_phase(env: ContainerEnv, d: Daemon, seconds: float, limit: int,
                    workers: int = 4) -> dict:
    bundles = [env.bundle(BundleSpec(args=["sys", "sysfs", "3"], notify=["sysfs"],
                                     listener_path=d.listener_path,
                                     annotations={ANNOTATION: "value:9"}))
               for _ in range(workers)]
    count, failures = 0, 0
    lock = threading.Lock()

    def worker(w: int, until: float, stop_at: int) -> None:
        nonlocal count, failures
        n = 0
        while time.monotonic() < until and count < stop_at:
            res = env.runtime.run(bundles[w], f"ops-life-{w}-{n}-{int(time.time())}")
            n += 1
            with lock:
                count += 1
                failures += res.rc != 0 or res.stdout.strip() != "ret=9 errno=0"

    def run_for(s: float, n: int) -> None:
        until, stop_at = time.monotonic() + s, count + n
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda w: worker(w, until, stop_at), range(workers)))

    run_for(min(8.0, seconds / 4), 100)  # warm: what the first lifecycles allocate for good
    warm_count = count
    before = rss_settled(d.pid)
    run_for(seconds, limit)
    after = rss_settled(d.pid)
    return {"count": count - warm_count, "failures": failures, "rss_before_kib": before,
            "rss_after_kib": after}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--storm-calls", type=int, default=20000)
    ap.add_argument("--lifecycles", type=int, default=1000)
    ap.add_argument("--lifecycle-seconds", type=float, default=55.0)
    args = ap.parse_args()
    t_start = time.monotonic()
    with ContainerEnv({"syscall_loop": build_static("syscall_loop")}) as env:
        # The environment the unit gives it (packaging/systemd/interceptd.service).
        d = Daemon(env.dir / "daemon", render_config(sections=HANDLERS),
                   args=["--log-level", "info"], env=UNIT_ENV).start()
        try:
            warm = env.bundle(BundleSpec(args=["sys", "sysfs", "3"], notify=["sysfs"],
                                         listener_path=d.listener_path))
            env.runtime.run(warm, f"ops-warm-{int(time.time())}")
            rss0 = rss_settled(d.pid)
            fl = fleet_phase(env, d, args.containers)
            storms = storm_phase(env, d, args.storm_calls)
            life = lifecycle_phase(env, d, args.lifecycle_seconds, args.lifecycles)
            alive = d.alive()
        finally:
            rc = d.stop()
    n = args.containers
    rss_target = RSS_BASE_KIB + RSS_PER_CONTAINER_KIB * n
    worst = max(storms, key=lambda t: t.p99 / t.p50)
    growth = life["rss_after_kib"] - life["rss_before_kib"]
    fleet_ok = fl["attached"] == n and not fl["unanswered"] and not fl["wrong"]
    rows = [
        ["attach time per container (p50 / p99)",
         f"{fl['attach_p50_ms']:.0f} / {fl['attach_p99_ms']:.0f} ms", "-", "-"],
        [f"{n} attached at once, each answered its own value",
         f"{fl['attached']} attached, {fl['unanswered']} unanswered, {fl['wrong']} wrong",
         "all", verdict(fleet_ok)],
        ["daemon RSS, 0 attached", f"{rss0 / 1024:.1f} MiB", f"<= {RSS_BASE_KIB // 1024} MiB",
         verdict(rss0 <= RSS_BASE_KIB)],
        [f"daemon RSS, {n} attached", f"{fl['rss_kib'] / 1024:.1f} MiB",
         f"<= {rss_target / 1024:.0f} MiB", verdict(fl["rss_kib"] <= rss_target)],
        ["notified call under 8 storms, p50 / p99 (worst storm)",
         f"{worst.p50 / 1000:.1f} / {worst.p99 / 1000:.1f} us ({worst.p99 / worst.p50:.1f}x)",
         f"p99 <= {STORM_RATIO:.0f}x p50", verdict(worst.p99 <= STORM_RATIO * worst.p50)],
        ["notified call under 8 storms, median p50 / p99",
         f"{statistics.median(t.p50 for t in storms) / 1000:.1f} / "
         f"{statistics.median(t.p99 for t in storms) / 1000:.1f} us", "-", "-"],
        [f"RSS growth over {life['count']} lifecycles ({life['failures']} failed)",
         f"{growth / 1024:+.1f} MiB ({life['rss_before_kib'] / 1024:.1f} -> "
         f"{life['rss_after_kib'] / 1024:.1f})",
         f"<= {LIFECYCLE_GROWTH_KIB // 1024} MiB",
         verdict(growth <= LIFECYCLE_GROWTH_KIB and not life["failures"])],
    ]
    print(table(["measure", "value", "target", ""], rows))
    print(f"(daemon alive to the end: {alive}, exit {rc}; {time.monotonic() - t_start:.0f} s)")
    OUT.mkdir(exist_ok=True)
    (OUT / "ops.json").write_text(json.dumps({
        "fleet": fl, "rss0_kib": rss0, "lifecycles": life,
        "storms": [t.__dict__ for t in storms]}, indent=2))
    return 0 if alive and rc == 0 and fleet_ok else 1


if __name__ == "__main__":
    sys.exit(main())
