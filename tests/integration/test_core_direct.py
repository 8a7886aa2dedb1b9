"""Direct mode of the engine: after a Python-path notification the waiter
receives on the fd itself (one wake-up less per call), and gives the fd back
to the receiver when it is slow, when a second fd arrives, or at close."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from interceptd import core
from interceptd._corelib import lib
from tests.integration import test_core_support as sup
from tests.integration.test_core_support import GETPGID, SYSFS


@pytest.fixture
def engine() -> Iterator[core.Engine]:
    e = core.Engine()
    yield e
    e.close()


def channel(engine: core.Engine) -> core.Channel:
    ch = engine.channel(1)
    ch.set_rule(SYSFS, core.ACT_PYTHON)
    ch.set_rule(GETPGID, core.ACT_VALUE, 5)
    return ch


def attach(engine: core.Engine, ch: core.Channel, *cmds: str) -> sup.Target:
    t = sup.start([SYSFS, GETPGID], *cmds)
    engine.attach(ch, t.listener)
    t.go()
    return t


def next_notification(ch: core.Channel, timeout: float = 10.0) -> core.Notification:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for it in ch.wait(0.2):
            if isinstance(it, core.Notification):
                return it
    raise AssertionError("no notification")


def serve(ch: core.Channel, stop: threading.Event, answered: list[int]) -> None:
    while not stop.is_set():
        for it in ch.wait(0.1):
            if isinstance(it, core.Notification):
                ch.respond(it, value=it.args[0] + 1)
                answered.append(it.args[0])


@pytest.mark.parametrize("direct", [True, False])
def test_python_and_fast_calls_mixed(engine: core.Engine, direct: bool) -> None:
    ch = channel(engine)
    ch.set_direct(direct)
    stop, answered = threading.Event(), []
    w = threading.Thread(target=serve, args=(ch, stop, answered))
    w.start()
    t = attach(engine, ch, f"loop:{SYSFS}:300", f"loop:{GETPGID}:300", f"call:{SYSFS}:41")
    try:
        lines = t.finish()
        assert lines[0].startswith(f"loop {SYSFS} 300 ") and lines[0].endswith(" 0")
        assert lines[1:] == [f"loop {GETPGID} 300 5 0", f"call {SYSFS} 42 0"]
    finally:
        stop.set()
        w.join()
        t.close()
    s = ch.stats()
    assert (s["python"], s["fast"], len(answered)) == (301, 300, 301)
    assert len(sup.drain(engine, 300)) == 300  # fast ones answered by the waiter too
    if direct:
        assert s["direct"] >= 250  # all but the first few went straight to the waiter
    else:
        assert s["direct"] == 0


def test_busy_waiter_gives_the_fd_back(engine: core.Engine) -> None:
    ch = channel(engine)
    t = attach(engine, ch, f"call:{SYSFS}:1", f"loop:{GETPGID}:100", f"call:{SYSFS}:2")
    try:
        n = next_notification(ch)
        ch.respond(n, value=10)
        # The waiter is "busy" now (not waiting): the receiver takes the fd
        # back within its park time and answers the fast calls itself.
        deadline = time.monotonic() + 2
        while ch.stats()["fast"] < 100 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ch.stats()["fast"] == 100
        ch.respond(next_notification(ch), value=20)
        assert t.finish() == [f"call {SYSFS} 10 0", f"loop {GETPGID} 100 5 0",
                              f"call {SYSFS} 20 0"]
    finally:
        t.close()


def test_second_fd_takes_the_waiter_back_to_the_queue(engine: core.Engine) -> None:
    ch = channel(engine)
    a = attach(engine, ch, f"call:{SYSFS}:1", "sleep:3000")
    b = None
    got: list[tuple[int, float]] = []
    try:
        ch.respond(next_notification(ch), value=1)

        def waiter() -> None:
            n = next_notification(ch, 5.0)  # blocks in a's fd (direct) at first
            got.append((n.args[0], time.monotonic()))
            ch.respond(n, value=99)

        w = threading.Thread(target=waiter)
        w.start()
        time.sleep(0.2)
        b = sup.start([SYSFS], f"call:{SYSFS}:7")
        t0 = time.monotonic()
        engine.attach(ch, b.listener)
        b.go()
        w.join(5)
        assert got and got[0][0] == 7 and got[0][1] - t0 < 1.0
        assert b.finish() == [f"call {SYSFS} 99 0"]
    finally:
        a.close()
        if b is not None:
            b.close()


def test_close_and_detach_while_the_waiter_receives(engine: core.Engine) -> None:
    ch = channel(engine)
    t = attach(engine, ch, f"call:{SYSFS}:1", "sleep:300")
    try:
        ch.respond(next_notification(ch), value=1)
        # The target exits while the waiter holds its fd: the hang-up goes
        # back to the receiver, which detaches as usual.
        deadline = time.monotonic() + 10
        items: list = []
        while not any(isinstance(i, core.Detached) for i in items):
            assert time.monotonic() < deadline
            items = ch.wait(1.0)
        t.finish()
    finally:
        t.close()
    ch2 = channel(engine)
    t2 = attach(engine, ch2, f"call:{SYSFS}:1", "sleep:5000")
    try:
        ch2.respond(next_notification(ch2), value=1)
        out: list = []
        w = threading.Thread(target=lambda: out.append(ch2.wait(30.0)))
        w.start()
        time.sleep(0.2)  # in direct mode, blocked in poll on the fd
        t0 = time.monotonic()
        ch2.close()
        w.join(5)
        assert not w.is_alive() and out == [[]] and time.monotonic() - t0 < 2
    finally:
        t2.close()


@pytest.mark.parametrize("direct", [True, False])
def test_interrupt_ends_a_wait_without_timeout(engine: core.Engine, direct: bool) -> None:
    ch = channel(engine)
    ch.set_direct(direct)
    t = attach(engine, ch, f"call:{SYSFS}:1", f"call:{GETPGID}:0", "sleep:5000")
    try:
        ch.respond(next_notification(ch), value=1)
        out: list = []
        w = threading.Thread(target=lambda: out.append(ch.wait(None)))
        w.start()
        time.sleep(0.2)  # direct: blocked in RECV on the fd (the fast call answered there)
        assert w.is_alive()
        t0 = time.monotonic()
        ch.interrupt()
        w.join(5)
        assert not w.is_alive() and out == [[]] and time.monotonic() - t0 < 1
        assert ch.stats()["fast"] == 1
        assert ch.wait(0) == []  # the interrupt was used up
    finally:
        t.close()


def test_fast_decisions_carry_args_and_the_comm_of_a_new_pid(engine: core.Engine) -> None:
    ch = channel(engine)
    t = attach(engine, ch, f"call:{GETPGID}:7:8", f"call:{GETPGID}:9")
    try:
        t.finish()
    finally:
        t.close()
    a, b = sup.drain(engine, 2)
    assert a.args[:2] == (7, 8) and b.args[0] == 9
    assert a.comm == "core_target" and b.comm == ""  # read once per new pid


def test_fd_taken_by_a_preempted_waiter_stays_taken(engine: core.Engine) -> None:
    """The lost-notification race, made deterministic: a waiter that has decided to
    take the fd (queue empty, receiver parked) is held off the CPU, up to 10x the
    receiver's park time, before it receives.  The receiver must not take the fd
    back meanwhile: before the fix it did, received the target's next call, queued
    it and offered the fd again, and the waiter then took that offer and polled an
    fd whose target waited for the queued call (a wait without deadline: forever).
    Rounds in which the receiver took the fd back before the waiter came (a loaded
    machine) go by the queue; at least one must have gone straight to the waiter."""
    ch = channel(engine)
    ch.set_direct(True)
    rounds = 10
    t = attach(engine, ch, *[f"call:{SYSFS}:{k}" for k in range(rounds)])
    try:
        n = next_notification(ch)
        for k in range(1, rounds):
            ch.respond(n, value=n.args[0])  # the fd was offered along with n
            lib.icd_direct_test_pause(50_000)
            t0 = time.monotonic()
            items = ch.wait(5.0)
            waited = time.monotonic() - t0
            lib.icd_direct_test_pause(0)
            assert [it.args[0] for it in items] == [k], (k, items, waited, ch.stats())
            assert waited < 2.0
            n = items[0]
        ch.respond(n, value=n.args[0])
        assert t.finish() == [f"call {SYSFS} {k} 0" for k in range(rounds)]
        assert ch.stats()["direct"] >= 1
    finally:
        lib.icd_direct_test_pause(0)
        t.close()
