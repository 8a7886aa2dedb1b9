"""The C notify engine against the real kernel (no containers): fast verdicts,
the Python path, addfd, detach, channel isolation, leaks."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator

import pytest

from interceptd import core
from tests.integration import test_core_support as sup
from tests.integration.test_core_support import GETPGID, GETSID, SYSFS, TIMES


@pytest.fixture
def engine() -> Iterator[core.Engine]:
    e = core.Engine()
    yield e
    e.close()


def attach(engine: core.Engine, ch: core.Channel, nrs: list[int], *cmds: str) -> sup.Target:
    t = sup.start(nrs, *cmds)
    engine.attach(ch, t.listener)
    t.go()
    return t


def wait_for(ch: core.Channel, kind: type, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = [i for i in ch.wait(0.2) if isinstance(i, kind)]
        if items:
            return items
    raise AssertionError(f"no {kind.__name__} within {timeout}s")


def test_probe_reports_kernel_features() -> None:
    p = core.notify_probe()
    assert p == {"user_notif": True, "sync_wakeup": True, "addfd_send": True}


def test_fast_errno_value_continue_and_default(engine: core.Engine) -> None:
    ch = engine.channel(7)
    ch.set_rule(SYSFS, core.ACT_VALUE, 4242)
    ch.set_rule(GETPGID, core.ACT_ERRNO, errno.EACCES)
    ch.set_rule(GETSID, core.ACT_CONTINUE)
    ch.set_default(core.ACT_ERRNO, errno.EPERM)
    t = attach(engine, ch, [SYSFS, GETPGID, GETSID, TIMES],
               f"call:{SYSFS}:3", f"call:{GETPGID}:0", f"call:{GETSID}:0", f"call:{TIMES}:0")
    try:
        lines = t.finish()
    finally:
        t.close()
    sid = os.getsid(0)
    assert lines == [
        f"call {SYSFS} 4242 0",
        f"call {GETPGID} -1 {errno.EACCES}",
        f"call {GETSID} {sid} 0",  # the kernel ran it: the helper shares our session
        f"call {TIMES} -1 {errno.EPERM}",  # no rule: the channel's default
    ]
    assert ch.stats()["fast"] == 4
    decisions = sup.drain(engine, 4)
    assert [(d.cookie, d.nr, d.action, d.value, d.send_errno) for d in decisions] == [
        (7, SYSFS, core.ACT_VALUE, 4242, 0),
        (7, GETPGID, core.ACT_ERRNO, errno.EACCES, 0),
        (7, GETSID, core.ACT_CONTINUE, 0, 0),
        (7, TIMES, core.ACT_ERRNO, errno.EPERM, 0),
    ]
    assert all(d.pid == t.pid for d in decisions)
    assert abs(decisions[0].ns_time / 1e9 - time.time()) < 60
    # Receive and answer times (CLOCK_MONOTONIC), for the handling-time histograms.
    now = time.monotonic_ns()
    for d in decisions:
        assert 0 < d.recv_ns <= d.sent_ns <= now
        assert 0 < d.handling_ns == d.sent_ns - d.recv_ns < 10**9
    assert engine.dropped_decisions == 0


def test_decision_ring_is_bounded() -> None:
    e = core.Engine(ring_size=5)
    ch = e.channel(1)
    ch.set_rule(SYSFS, core.ACT_VALUE, 1)
    t = attach(e, ch, [SYSFS], f"loop:{SYSFS}:12")
    try:
        assert t.finish() == [f"loop {SYSFS} 12 1 0"]
    finally:
        t.close()
        e.close()
    assert len(e.drain_decisions()) == 5
    assert e.dropped_decisions == 7


def test_python_path_respond_and_args(engine: core.Engine) -> None:
    ch = engine.channel(1)
    ch.set_rule(SYSFS, core.ACT_PYTHON)
    ch.set_rule(GETPGID, core.ACT_PYTHON)
    t = attach(engine, ch, [SYSFS, GETPGID], f"call:{SYSFS}:2:77:0x55", f"call:{GETPGID}:9")
    try:
        (n,) = wait_for(ch, core.Notification)
        assert (n.nr, n.pid, n.arch) == (SYSFS, t.pid, 0xC000003E)
        assert n.args[:3] == (2, 77, 0x55)
        assert n.notify_fd == t.listener
        assert core.id_valid(n.notify_fd, n.id)
        ch.respond(n, value=31337)
        assert not core.id_valid(n.notify_fd, n.id)
        with pytest.raises(OSError) as ei:
            ch.respond(n, value=1)  # answered already (EINPROGRESS until the target woke)
        assert ei.value.errno in (errno.ENOENT, errno.EINPROGRESS)
        (n2,) = wait_for(ch, core.Notification)
        ch.respond(n2, error=errno.ENOTSUP)
        assert t.finish() == [f"call {SYSFS} 31337 0", f"call {GETPGID} -1 {errno.ENOTSUP}"]
    finally:
        t.close()
    assert ch.stats()["python"] == 2


def test_python_continue(engine: core.Engine) -> None:
    ch = engine.channel(1)
    ch.set_default(core.ACT_PYTHON)
    t = attach(engine, ch, [GETSID], f"call:{GETSID}:0")
    try:
        (n,) = wait_for(ch, core.Notification)
        ch.respond(n, cont=True)
        assert t.finish() == [f"call {GETSID} {os.getsid(0)} 0"]
    finally:
        t.close()


def test_addfd_send_injects_and_answers(engine: core.Engine) -> None:
    ch = engine.channel(1)
    ch.set_rule(SYSFS, core.ACT_PYTHON)
    t = attach(engine, ch, [SYSFS], f"fd:{SYSFS}")
    r, w = os.pipe()
    try:
        os.write(w, b"hello-from-daemon")
        os.close(w)
        (n,) = wait_for(ch, core.Notification)
        newfd = ch.addfd(n, r, os.O_CLOEXEC)
        assert newfd >= 3
        assert t.finish() == [f"fd {SYSFS} {newfd} 0 hello-from-daemon"]
    finally:
        os.close(r)
        t.close()


def test_detach_when_target_exits(engine: core.Engine) -> None:
    ch = engine.channel(1)
    ch.set_rule(SYSFS, core.ACT_VALUE, 0)
    t = attach(engine, ch, [SYSFS], f"call:{SYSFS}")
    try:
        t.finish()
        (d,) = wait_for(ch, core.Detached)
        assert d.notify_fd == t.listener
        deadline = time.monotonic() + 5
        while ch.stats()["receivers"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ch.stats()["receivers"] == 0
        assert ch.stats()["detached"] == 1
        with pytest.raises(OSError):
            os.fstat(t.listener)  # the engine closed it
    finally:
        t.close()


def test_attach_refuses_non_notify_fd(engine: core.Engine) -> None:
    ch = engine.channel(1)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError):
            engine.attach(ch, r)
    finally:
        os.close(r)
        os.close(w)


def test_stalled_channel_does_not_delay_another(engine: core.Engine) -> None:
    slow = engine.channel(1)
    slow.set_rule(SYSFS, core.ACT_PYTHON)  # nobody ever waits on this channel
    fast = engine.channel(2)
    fast.set_rule(SYSFS, core.ACT_VALUE, 5)
    stuck = attach(engine, slow, [SYSFS], f"call:{SYSFS}")
    try:
        deadline = time.monotonic() + 5
        while slow.stats()["python"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.stats()["python"] == 1  # queued, unanswered
        t0 = time.monotonic()
        t = attach(engine, fast, [SYSFS], f"loop:{SYSFS}:2000")
        try:
            assert t.finish() == [f"loop {SYSFS} 2000 5 0"]
        finally:
            t.close()
        assert time.monotonic() - t0 < 5
        assert stuck.proc.poll() is None  # still blocked on the stalled channel
        # Closing the stalled channel answers what it never handled.
        slow.close()
        assert stuck.finish() == [f"call {SYSFS} -1 {errno.ENOSYS}"]
    finally:
        stuck.close()


def test_close_stops_blocked_receivers_promptly(engine: core.Engine) -> None:
    ch = engine.channel(1)
    t = sup.start([SYSFS], "sleep:200", f"call:{SYSFS}")
    try:
        engine.attach(ch, t.listener)
        t.go()
        time.sleep(0.05)  # the receiver now sits in RECV
        t0 = time.monotonic()
        ch.close()
        assert time.monotonic() - t0 < 1.0
        assert ch.stats()["receivers"] == 0
        # The listener is gone, so the notified call fails instead of hanging.
        assert t.finish() == [f"call {SYSFS} -1 {errno.ENOSYS}"]
        assert ch.wait(0) == []
        spare = os.dup(t.sock.fileno())
        with pytest.raises(OSError):
            engine.attach(ch, spare)  # refused: the caller keeps the fd
        os.close(spare)
    finally:
        t.close()


def test_wait_from_many_threads_with_several_fds(engine: core.Engine) -> None:
    ch = engine.channel(1)
    ch.set_rule(SYSFS, core.ACT_PYTHON)
    targets = [attach(engine, ch, [SYSFS], f"loop:{SYSFS}:50") for _ in range(4)]
    answered = 0
    stop = threading.Event()

    def worker() -> None:
        nonlocal answered
        while not stop.is_set():
            for item in ch.wait(0.1):
                if isinstance(item, core.Notification):
                    ch.respond(item, value=item.pid % 1000)
                    answered += 1

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        for t in targets:
            assert t.finish() == [f"loop {SYSFS} 50 {t.pid % 1000} 0"]
    finally:
        stop.set()
        for th in threads:
            th.join()
        for t in targets:
            t.close()
    assert answered == 200


def test_no_fd_or_zombie_leaks_over_many_cycles() -> None:
    sup.helper()
    before = sup.open_fds()
    threads = len(os.listdir("/proc/self/task"))
    for i in range(60):
        e = core.Engine()
        ch = e.channel(i)
        ch.set_rule(SYSFS, core.ACT_VALUE, i)
        t = attach(e, ch, [SYSFS], f"call:{SYSFS}")
        assert t.finish() == [f"call {SYSFS} {i} 0"]
        t.close()
        if i % 2:
            wait_for(ch, core.Detached)
        ch.close()
        e.close()
    assert sup.open_fds() == before
    assert sup.zombies_of(os.getpid()) == []
    deadline = time.monotonic() + 5  # detached receiver threads finish exiting
    while len(os.listdir("/proc/self/task")) > threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir("/proc/self/task")) <= threads


def test_close_races_with_traffic_without_hanging() -> None:
    """Close while a worker answers a busy target: every call returns (answered
    or ENOSYS), the worker sees the close, nothing hangs."""
    for _round in range(5):
        e = core.Engine()
        ch = e.channel(1)
        ch.set_rule(SYSFS, core.ACT_PYTHON)
        ch.set_rule(GETPGID, core.ACT_VALUE, 3)
        t = attach(e, ch, [SYSFS, GETPGID], f"loop:{SYSFS}:100000", f"loop:{GETPGID}:10")
        done = threading.Event()

        def worker(ch: core.Channel = ch, done: threading.Event = done) -> None:
            while not ch.closed:
                for item in ch.wait(0.05):
                    if isinstance(item, core.Notification):
                        with contextlib.suppress(OSError):
                            ch.respond(item, value=1)  # the close may win the race
            done.set()

        th = threading.Thread(target=worker)
        th.start()
        try:
            while ch.stats()["python"] < 200:
                time.sleep(0.001)
            ch.close()
            lines = t.finish(timeout=30)
            th.join(timeout=10)
            assert done.is_set()
            # The loop ends with ENOSYS (listener gone); later calls no longer notify.
            assert lines[0] == f"loop {SYSFS} 100000 -1 {errno.ENOSYS}"
            assert lines[1] == f"loop {GETPGID} 10 -1 {errno.ENOSYS}"
        finally:
            t.close()
            e.close()


def test_forked_child_can_drop_engine_objects() -> None:
    """After os.fork() the receivers are not in the child: freeing the inherited
    engine there must return at once, and must not disturb the parent's."""
    e = core.Engine()
    ch = e.channel(1)
    ch.set_rule(SYSFS, core.ACT_VALUE, 8)
    t = attach(e, ch, [SYSFS], "sleep:300", f"call:{SYSFS}")
    try:
        assert os.get_inheritable(t.listener) is False  # attach made it close-on-exec
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                ch.close()
                e.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert t.finish() == [f"call {SYSFS} 8 0"]  # the parent's receiver still serves
    finally:
        t.close()
        e.close()


def test_native_helper_table_answers_carry_times(engine: core.Engine) -> None:
    """The native helper answers table rules itself; its records carry the receive and
    answer times (CLOCK_MONOTONIC) like the receivers' own. It gets the fd with the first
    call it is for (a held one here: ACT_HOLD, decided while it holds it)."""
    ch = engine.channel(9)
    ch.set_rule(GETPGID, core.ACT_HOLD)
    t = sup.start([GETPGID], f"call:{GETPGID}:0", f"call:{GETPGID}:0")
    try:
        engine.attach(ch, t.listener)
        pidfd = os.pidfd_open(t.pid)
        try:
            ch.enable_native(["tmpfs"], pidfd, t.pid, t.listener)
        finally:
            os.close(pidfd)
        t.go()
        time.sleep(0.2)  # the first call handed over with the fd, held by the helper
        ch.set_rule(GETPGID, core.ACT_ERRNO, errno.EACCES)
        lines = t.finish()
    finally:
        t.close()
    assert lines == [f"call {GETPGID} -1 {errno.EACCES}"] * 2
    assert ch.stats()["native_table"] == 2
    decisions = sup.drain(engine, 2)
    assert [(d.cookie, d.nr, d.action, d.value) for d in decisions] == [
        (9, GETPGID, core.ACT_ERRNO, errno.EACCES)] * 2
    for d in decisions:
        assert 0 < d.recv_ns <= d.sent_ns <= time.monotonic_ns()
        assert 0 < d.handling_ns < 10**9
