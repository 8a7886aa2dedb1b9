"""interceptd with per-stage timers on the vetted mount/umount path (bench_vetting.py
--breakdown runs it in place of the daemon). Profiling only: the wrappers add ~1 us each.

On SIGUSR1 (and at exit) it writes {stage: [total_ns, calls]} as JSON to the path in
INTERCEPTD_BENCH_TIMINGS.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import signal
import sys
import time
from typing import Any

from interceptd import core, core_exec, handlers, policystore
from interceptd.handlers import mount, resolve, scope, table
from interceptd.kernel import executors
from interceptd.kernel import mounttable as mt

T: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])


def timed(obj: Any, name: str, label: str) -> None:
    f = getattr(obj, name)

    def w(*a: Any, **k: Any) -> Any:
        t = time.perf_counter_ns()
        try:
            return f(*a, **k)
        finally:
            e = T[label]
            e[0] += time.perf_counter_ns() - t
            e[1] += 1

    setattr(obj, name, w)


def install() -> None:
    timed(handlers.HandlerRegistry, "call", "handler incl. policy wrapper")
    timed(mount, "handle_mount", "mount handler")
    timed(mount, "handle_umount2", "umount2 handler")
    table.HANDLERS["mount"] = mount.handle_mount
    table.HANDLERS["umount2"] = mount.handle_umount2
    timed(scope, "read_str", "read a string argument (read once + ID_VALID)")
    timed(resolve, "resolve", "umount: resolve the path to an O_PATH fd + its mount")
    timed(mt.LazyMountTable, "_raw", "umount: read /proc/<pid>/mountinfo (cached 2nd call)")
    timed(mount, "decide_mount", "decide mount")
    timed(mount, "decide_umount", "decide umount (incl. parent lookup)")
    timed(executors, "run", "executor: policy side (pidfd, ID_VALID, cache)")
    timed(core.Executor, "run", "executor: Executor.run")
    timed(core_exec, "_exec_call", "executor: C round trip incl. the mount op")
    timed(core.Channel, "respond", "respond (SEND)")
    # Once per container (the first pair's extra cost):
    timed(policystore.PolicyStore, "state", "policy state (1st: attach-time snapshot)")
    timed(mount, "enable_native", "native helper: enable (1st: start)")
    timed(core.Channel, "enable_native", "native helper: fork + enter + hello")
    timed(core.Executor, "__init__", "executor: start (fork + setns)")


def dump(*_: Any) -> None:
    path = os.environ.get("INTERCEPTD_BENCH_TIMINGS")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(T, f)


if __name__ == "__main__":
    install()
    atexit.register(dump)
    signal.signal(signal.SIGUSR1, dump)
    from interceptd.daemon import main

    sys.exit(main())
