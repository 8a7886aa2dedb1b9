"""The longest pause a running container sees when the daemon restarts (issue 14).

N runc containers loop over two notified calls (sysfs: a Python handler; acct: the
verdict table) and log their 64 longest calls, with its start time on the
host's monotonic clock. Meanwhile:

  1. the daemon is SIGKILLed and a peer playing systemd starts it again at once with
     the fds of its fd store (the unit's RestartSec= is not counted)  target <= 250 ms
  2. `interceptctl restart`: the daemon hands over to a successor      target <= 100 ms

A pause is the longest call that ended after the event and before the next one, over
all containers. Every call's answer is checked too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from common import OUT, ContainerEnv, table

from tests.harness.bundle import BundleSpec
from tests.harness.daemon import render_config
from tests.harness.handlers import ANNOTATION
from tests.harness.runtime import output
from tests.harness.sdpeer import PeerDaemon

NR_SYSFS, NR_ACCT, FAST_VALUE = 139, 163, 7
TARGETS = {"SIGKILL + restart": 250.0, "interceptctl restart": 100.0}
LINE = re.compile(r"calls=(\d+) ok=(\d+) bad=(\d+) enosys=(\d+)")


def pause_after(slow: list[tuple[int, int]], at_us: int, until_us: float) -> float:
    """The longest call (ms) that ended after the event at `at_us` and before the next
    one: a call under way at the very instant was likely answered by the old daemon;
    the ones right after it waited for the new one."""
    return max((d / 1000 for s, d in slow if at_us <= s + d < until_us), default=0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--containers", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="restarts of each kind")
    ap.add_argument("--json", type=Path, default=OUT / "bench_restart.json")
    args = ap.parse_args()
    seconds = 4 + args.rounds * 5
    events: list[tuple[str, int]] = []
    results: list[tuple[list[int], list[tuple[int, int]]]] = []
    with ContainerEnv({}) as env, ExitStack() as stack:
        d = PeerDaemon(env.dir / "d", render_config(
            rules=[{"syscall": "acct", "action": "value", "value": FAST_VALUE}],
            sections={"ebpf": {"enabled": False},
                      "handlers": {"modules": ["tests.harness.handlers"]}}),
            log_level="info")
        d.start()
        stack.callback(d.stop)
        bundles = []
        for i in range(args.containers):
            b = env.bundle(BundleSpec(
                args=["restart_loop", str(seconds), str(NR_SYSFS), str(1000 + i),
                      str(NR_ACCT), str(FAST_VALUE)],
                notify=["sysfs", "acct"], listener_path=d.listener_path,
                annotations={ANNOTATION: f"value:{1000 + i}"}))
            cid = f"bench-rst-{os.getpid()}-{i}"
            stack.enter_context(env.runtime.started(b, cid))
            bundles.append(b)
        time.sleep(1.5)
        adopted = []
        for _ in range(args.rounds):
            events.append(("SIGKILL + restart", time.monotonic_ns() // 1000))
            d.kill()
            d.start()
            adopted.append(d.control("status")["handover"])
            time.sleep(1.0)
            old = d.pid
            events.append(("interceptctl restart", 0))
            d.peer.ready.clear()
            r = d.control("restart", timeout=60)
            # The hand-over starts once the successor is ready: the event's time.
            events[-1] = (events[-1][0], time.monotonic_ns() // 1000)
            deadline = time.monotonic() + 30
            while d.pid == old or not d.peer.ready.is_set():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no hand-over: {r}\n{d.log()[-4000:]}")
                time.sleep(0.01)
            adopted.append(d.control("status")["handover"])
            time.sleep(1.5)
        deadline = time.monotonic() + seconds + 30
        for b in bundles:
            while not LINE.search(output(b)[0]):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a container never finished: {output(b)}\n"
                                       + d.log()[-5000:])
                time.sleep(0.2)
            text = output(b)[0]
            counts = [int(x) for x in LINE.search(text).groups()]
            m = re.search(r"slow=(\S*)", text)
            slow = [tuple(int(x) for x in p.split(":")) for p in (m.group(1).split(",")
                                                                  if m and m.group(1) else [])]
            results.append((counts, slow))  # type: ignore[arg-type]
    bad = sum(c[2] for c, _ in results)
    calls = sum(c[0] for c, _ in results)
    rows, out = [], {}
    for kind, target in TARGETS.items():
        pauses = [max(pause_after(slow, at, nxt) for _, slow in results)
                  for (k, at), nxt in zip(events, [*(t for _, t in events[1:]), float("inf")],
                                          strict=True) if k == kind]
        worst = max(pauses, default=0.0)
        verdict = "PASS" if worst <= target and bad == 0 else "MISS"
        rows.append([kind, args.containers, ", ".join(f"{p:.0f}" for p in pauses),
                     f"{worst:.0f}", f"<= {target:.0f}", verdict])
        out[kind] = {"pauses_ms": pauses, "worst_ms": worst, "target_ms": target,
                     "verdict": verdict}
    print(table(["event", "containers", "pause per round (ms)", "longest (ms)", "target",
                 ""], rows))
    print(f"calls {calls}, wrong answers or ENOSYS {bad}")
    print("daemon side (adoption + replay ms, process start to replayed ms): "
          + "; ".join(f"{a['pause_ms']}/{a['since_exec_ms']} ({a['replayed']} replayed)"
                      for a in adopted))
    OUT.mkdir(exist_ok=True)
    args.json.write_text(json.dumps({"results": out, "calls": calls, "bad": bad,
                                     "adopted": adopted}, indent=2))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
