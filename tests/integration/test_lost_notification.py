"""No lost Python-path notification under load, without any restart.

The hang this guards against: in direct mode a waiter that had looked at the queue
without the lock (empty) then found the receiver's offer of the fd, made along with
an item pushed in between, took the fd and blocked in RECV while that item sat in
the queue; its target waited for that very answer, so nothing ever came again
(csrc/direct.c, icd_direct_wait). The second window, the same hang: a waiter that
found the offer and the queue empty under the lock but took the fd only after it,
preempted in between for longer than the receiver's park time, took the receiver's
next offer instead, made with the target's next call queued
(test_core_direct.py::test_fd_taken_by_a_preempted_waiter_stays_taken makes that
window deterministic). Each is a few instructions wide: it takes many channels whose
workers wait forever (as the daemon's do), targets alternating a Python-path and a
fast call, and a machine busier than its cores.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from interceptd import core
from tests.harness import Runtime
from tests.harness.handlers import ANNOTATION
from tests.harness.runtime import output
from tests.integration import test_core_support as sup
from tests.integration.test_core_support import GETPGID, SYSFS

NR_SYSFS, NR_ACCT = 139, 163  # x86_64
FAST_VALUE = 7
LINE = re.compile(r"calls=(\d+) ok=(\d+) bad=(\d+) enosys=(\d+) max_us=(\d+)")


def _attach_target(e: core.Engine, i: int, cmds: list[str]) -> tuple[core.Channel, sup.Target]:
    """Channel i+1 in direct mode (the mode the race was in, whatever the default):
    sysfs for Python, getpgid answered 5 by the table; a target running `cmds` on it."""
    ch = e.channel(i + 1)
    ch.set_direct(True)
    ch.set_rule(SYSFS, core.ACT_PYTHON)
    ch.set_rule(GETPGID, core.ACT_VALUE, 5)
    t = sup.start([SYSFS, GETPGID], *cmds)
    e.attach(ch, t.listener)
    return ch, t


def _read_outputs(targets: list[sup.Target]) -> tuple[list[list[str]], list[threading.Thread]]:
    outs: list[list[str]] = [[] for _ in targets]
    readers = [threading.Thread(target=lambda f=t.proc.stdout, o=o: o.extend(f), daemon=True)
               for t, o in zip(targets, outs, strict=True)]
    for r in readers:
        r.start()
    return outs, readers


def _stuck(targets: list[sup.Target], chans: list[core.Channel],
           deadline: float) -> list[tuple[int, dict[str, int]]]:
    """The targets still blocked at `deadline`, with their channels' counts."""
    stuck = []
    for i, t in enumerate(targets):
        try:
            t.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            stuck.append((i, chans[i].stats()))
    return stuck


def _check_outputs(targets: list[sup.Target], outs: list[list[str]],
                   readers: list[threading.Thread], pairs: int) -> None:
    for r in readers:
        r.join(5)
    for t, o in zip(targets, outs, strict=True):
        assert t.proc.returncode == 0
        assert o.count(f"call {SYSFS} 3 0\n") == pairs
        assert o.count(f"call {GETPGID} 5 0\n") == pairs


def test_engine_loses_no_python_path_call() -> None:
    """20 targets x 3000 Python-path calls, each channel with one waiter that waits
    forever: every target finishes (before the fix 3 runs in 4 hung here)."""
    n, pairs = 20, 3000
    e = core.Engine()
    targets: list[sup.Target] = []
    chans: list[core.Channel] = []

    def worker(ch: core.Channel) -> None:
        rnd = random.Random(ch.stats()["fast"])
        while not ch.closed:
            for it in ch.wait(None):
                if not isinstance(it, core.Notification):
                    continue
                if rnd.random() < 0.2:
                    # Past PARK_NS, so the receiver takes the fd back and queues the
                    # next call; then back to wait() at a random moment of that.
                    time.sleep(0.006)
                    ch.answer(it, it.args[0], 0, 0)
                    end = time.perf_counter() + rnd.random() * 50e-6
                    while time.perf_counter() < end:
                        pass
                else:
                    ch.answer(it, it.args[0], 0, 0)

    cmds = [c for _ in range(pairs) for c in (f"call:{SYSFS}:3", f"call:{GETPGID}:0")]
    try:
        for i in range(n):
            ch, t = _attach_target(e, i, cmds)
            chans.append(ch)
            targets.append(t)
            threading.Thread(target=worker, args=(ch,), daemon=True).start()
        outs, readers = _read_outputs(targets)
        for t in targets:
            t.go()
        stuck = _stuck(targets, chans, time.monotonic() + 25)
        assert not stuck, f"targets hung on a notified call: {stuck}"
        _check_outputs(targets, outs, readers, pairs)
    finally:
        for t in targets:
            t.close()
        for ch in chans:
            ch.close()
        e.close()


def test_engine_loses_no_call_through_revokes() -> None:
    """Every turn change of direct mode at once, at random moments: two waiters per
    channel with tiny or no timeouts, handlers slower than the park time, and a
    thread that interrupts, switches direct mode off and on, and attaches a second,
    short-lived target (each takes the fd back from the waiter): every call of every
    target is answered."""
    n, pairs = 10, 3000
    e = core.Engine()
    targets: list[sup.Target] = []
    extra: list[sup.Target] = []
    chans: list[core.Channel] = []
    done = threading.Event()

    def worker(ch: core.Channel, seed: int) -> None:
        rnd = random.Random(seed)
        while not ch.closed:
            for it in ch.wait(rnd.choice([None, None, 0.0005, 0.002, 0.02])):
                if not isinstance(it, core.Notification):
                    continue
                if rnd.random() < 0.1:
                    time.sleep(0.006)
                ch.answer(it, it.args[0], 0, 0)

    def chaos() -> None:
        rnd = random.Random(1)
        while not done.is_set():
            time.sleep(rnd.random() * 0.003)
            i = rnd.randrange(n)
            ch, what = chans[i], rnd.random()
            if what < 0.7:
                ch.interrupt()
            elif what < 0.95:
                ch.set_direct(False)
                ch.set_direct(True)
            elif len(extra) < 2 * n:
                t = sup.start([SYSFS], *[f"call:{SYSFS}:{k}" for k in range(20)])
                extra.append(t)
                e.attach(ch, t.listener)
                t.go()

    cmds = [c for _ in range(pairs) for c in (f"call:{SYSFS}:3", f"call:{GETPGID}:0")]
    chaos_thread = threading.Thread(target=chaos, daemon=True)
    try:
        for i in range(n):
            ch, t = _attach_target(e, i, cmds)
            chans.append(ch)
            targets.append(t)
            for k in range(2):
                threading.Thread(target=worker, args=(ch, 2 * i + k), daemon=True).start()
        outs, readers = _read_outputs(targets)
        chaos_thread.start()
        for t in targets:
            t.go()
        deadline = time.monotonic() + 40
        stuck = _stuck(targets, chans, deadline)
        done.set()
        chaos_thread.join(5)
        assert not stuck, f"targets hung on a notified call: {stuck}"
        for t in list(extra):
            out = t.finish(timeout=max(0.1, deadline + 10 - time.monotonic()))
            assert out == [f"call {SYSFS} {k} 0" for k in range(20)]
        _check_outputs(targets, outs, readers, pairs)
        assert sum(ch.stats()["direct"] for ch in chans) > 0  # direct mode was in use
    finally:
        done.set()
        if chaos_thread.is_alive():
            chaos_thread.join(5)
        for t in targets + extra:
            t.close()
        for ch in chans:
            ch.close()
        e.close()


def test_containers_lose_no_python_path_call(
        runtime: Runtime, bundle_factory: Callable[..., Any],
        daemon_factory: Callable[..., Any], new_id: Callable[[str], str]) -> None:
    """Containers looping over a Python-path call (sysfs, a handler's value) and a
    fast one (acct, the verdict table's value) through a real daemon: every call of
    every container answered, none hangs."""
    n = int(os.environ.get("INTERCEPTD_LOST_CONTAINERS", "12"))
    seconds = 8
    d = daemon_factory(rules=[{"syscall": "acct", "action": "value", "value": FAST_VALUE}],
                       sections={"handlers": {"modules": ["tests.harness.handlers"]}})
    with contextlib.ExitStack() as stack:
        started = []
        for i in range(n):
            answer = 2000 + i
            b = bundle_factory(
                args=["restart_loop", str(seconds), str(NR_SYSFS), str(answer),
                      str(NR_ACCT), str(FAST_VALUE)],
                notify=["sysfs", "acct"], listener_path=d.listener_path,
                annotations={ANNOTATION: f"value:{answer}"})
            cid = stack.enter_context(runtime.started(b, new_id("lost")))
            # Each as it starts: under load starting all took longer than a
            # container runs, and the first had exited and gone when looked for.
            d.wait_container(cid)
            started.append((cid, b))
        deadline = time.monotonic() + seconds + 30
        for cid, b in started:
            while not (m := LINE.search(output(b)[0])):
                assert time.monotonic() < deadline, f"{cid} hung: {output(b)} {d.container(cid)}"
                time.sleep(0.1)
            calls, ok, bad, enosys, _ = map(int, m.groups())
            assert bad == 0 and enosys == 0 and calls == ok > 100, m.group(0)
