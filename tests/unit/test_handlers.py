"""Handlers and the per-container dispatcher against a fake core (no kernel)."""

import errno
import os
import threading
import time

import fakecore as core
import pytest

from interceptd.config import Rule
from interceptd.dispatch import Dispatcher
from interceptd.events import Event, EventBus
from interceptd.handlers import HandlerRegistry, Request
from interceptd.ocistate import ContainerState, ListenerReject, ProcessState
from interceptd.registry import Container, Registry
from interceptd.syscalls import nr
from interceptd.verdict import Verdict, build_table

NR = {n: nr(n) for n in ("sysfs", "ustat", "mount", "getpid")}
NAME = {v: k for k, v in NR.items()}


def request(syscall="sysfs", handlers=None):
    return Request(container=Container("c0", "/b", {}, os.getpid(), -1),
                   notif=core.Notification(1, os.getpid(), NR[syscall]),
                   syscall=syscall, args=[0] * 6, core=core)


def test_handler_exception_fails_closed_with_counter(caplog):
    h = HandlerRegistry()

    def boom(req):
        raise RuntimeError("bug in handler")

    h.register("sysfs", boom)
    v = h.handle(request())
    assert v == Verdict.errno(errno.EPERM, "internal error")
    assert h.counters.get("handler_errors", "internal error") == 1
    assert "handler failed" in caplog.text and "bug in handler" in caplog.text


def test_handler_target_gone_and_bad_return():
    h = HandlerRegistry()

    def gone(req):
        raise core.TargetGone()

    h.register("sysfs", gone)
    h.register("ustat", lambda req: 42)
    assert h.handle(request()).reason == "target gone"
    assert h.handle(request("ustat")).reason == "internal error"
    assert h.counters.snapshot()["handler_errors"] == {"target gone": 1, "bad verdict": 1}


def test_register_twice_refused():
    h = HandlerRegistry()
    h.register("sysfs", lambda r: Verdict.value(1, "x"))
    with pytest.raises(ValueError):
        h.register("sysfs", lambda r: Verdict.value(1, "x"))
    assert h.names() == ["sysfs"] and "sysfs" in h


def test_request_reads_through_core():
    r = request()
    assert r.read(0x1000, 4) == b"\0\0\0\0"
    assert r.read_string(0x1000, 10) == b"x"
    assert r.valid()


def test_build_table():
    rules = [Rule("sysfs", "value", value=7), Rule("ustat", "errno", errno=13),
             Rule("getpid", "continue")]
    t = build_table(rules, ["ustat", "mount"], NR.__getitem__)
    got = {(e.syscall, e.nr, e.action, e.value) for e in t}
    assert got == {("sysfs", 139, "value", 7), ("ustat", 136, "python", 0),
                   ("getpid", 39, "continue", 0), ("mount", 165, "python", 0)}


def test_build_table_unknown_syscall():
    from interceptd.config import ConfigError
    with pytest.raises(ConfigError, match="unknown syscall 'nope'"):
        build_table([Rule("nope", "continue")], [], NR.__getitem__)


def state(cid="c1", status="creating", pid=None, bundle="/b"):
    pid = os.getpid() if pid is None else pid
    return ProcessState("1.0", ["seccompFd"], pid, "",
                        ContainerState("1.0", cid, status, pid, bundle, {"k": "v"}))


class Rig:
    def __init__(self, handlers=None, rules=()):
        self.engine = core.FakeEngine()
        self.registry = Registry()
        self.handlers = handlers or HandlerRegistry()
        self.bus = EventBus()
        self.counters = self.handlers.counters
        table = build_table(list(rules), self.handlers.names(), NR.__getitem__)
        self.d = Dispatcher(core, self.engine, self.registry, self.handlers, table, self.bus,
                            self.counters, name_of=lambda n: NAME[n], comm_of=lambda p: "sh")
        self.sub = self.bus.subscribe(100)

    def events(self, n, timeout=5):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            e = self.sub.get(0.05)
            if e is not None:
                out.append(e)
        return out

    def until(self, cond, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.01)
        return False


@pytest.fixture
def rig():
    rigs = []

    def make(**kw):
        r = Rig(**kw)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.d.close(wait=1)


def test_attach_loads_table_and_registers(rig):
    r = rig(rules=[Rule("sysfs", "value", value=7)])
    r.d.on_message(state(), 10)
    c = r.registry.get("c1")
    assert c is not None and c.notify_fds == [10] and c.annotations == {"k": "v"}
    ch = r.engine.channels[c.cookie]
    assert ch.rules == {139: (core.ACT_VALUE, 7)}
    assert ch.default == (core.ACT_ERRNO, errno.EPERM)
    assert ch.fds == [10]
    assert c.pidfd >= 0 and c.cgroup_paths and c.uid_map


def test_exec_attaches_to_same_channel_and_detach_removes(rig):
    r = rig()
    r.d.on_message(state(), 10)
    r.d.on_message(state(status="running", pid=0, bundle="."), 11)  # crun's exec shape
    c = r.registry.get("c1")
    assert c.notify_fds == [10, 11]
    ch = r.engine.channels[c.cookie]
    assert ch.fds == [10, 11]
    ch.items.put(core.Detached(11))
    assert r.until(lambda: c.notify_fds == [10])
    assert r.registry.get("c1") is not None
    ch.items.put(core.Detached(10))
    assert r.until(lambda: r.registry.get("c1") is None)
    assert r.until(lambda: ch.closed)
    assert c.pidfd == -1
    assert r.counters.get("containers_detached") == 1


def test_release_hooks_run_once_when_the_last_fd_detaches(rig):
    handlers = HandlerRegistry()
    released = []
    handlers.on_release(lambda c: 1 / 0)  # a failing hook doesn't stop the others
    handlers.on_release(released.append)
    r = rig(handlers=handlers)
    r.d.on_message(state(), 10)
    r.d.on_message(state(status="running", pid=0, bundle="."), 11)
    c = r.registry.get("c1")
    ch = r.engine.channels[c.cookie]
    ch.items.put(core.Detached(11))
    assert r.until(lambda: c.notify_fds == [10])
    assert released == []
    ch.items.put(core.Detached(10))
    assert r.until(lambda: released == [c])
    assert r.counters.get("handler_errors", "release hook") == 1


def test_duplicate_and_unknown_ids_rejected(rig):
    r = rig()
    r.d.exec_wait = 0.05
    r.d.on_message(state(), 10)
    with pytest.raises(ListenerReject) as ei:
        r.d.on_message(state(bundle="/other"), 11)
    assert ei.value.reason == "duplicate id"
    with pytest.raises(ListenerReject) as ei:
        r.d.on_message(state(status="running", pid=1), 12)
    assert ei.value.reason == "duplicate id"
    with pytest.raises(ListenerReject) as ei:
        r.d.on_message(state(cid="c2", status="running"), 13)
    assert ei.value.reason == "unknown container"
    assert r.registry.get("c1").notify_fds == [10]


def test_exec_before_init_waits_for_the_init(rig):
    # crun: `start` returns (and an exec may follow) before the init's message is in.
    r = rig()
    got = []
    t = threading.Thread(target=lambda: got.append(
        r.d.on_message(state(status="running", pid=0, bundle="."), 11)))
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and len(r.registry) == 0
    r.d.on_message(state(), 10)
    t.join(2)
    assert not t.is_alive() and got == [None]
    c = r.registry.get("c1")
    assert c.notify_fds == [10, 11] and r.engine.channels[c.cookie].fds == [10, 11]


def test_exec_without_init_refused_after_the_wait(rig):
    r = rig()
    r.d.exec_wait = 0.3
    t0 = time.monotonic()
    with pytest.raises(ListenerReject) as ei:
        r.d.on_message(state(cid="c9", status="running", pid=0, bundle="."), 11)
    assert ei.value.reason == "unknown container"
    assert 0.25 <= time.monotonic() - t0 < 2
    assert len(r.registry) == 0


def test_dead_init_rejected(rig):
    r = rig()
    with pytest.raises(ListenerReject) as ei:
        r.d.on_message(state(pid=2**22), 10)
    assert ei.value.reason == "target gone"
    assert len(r.registry) == 0


def test_python_path_answers_and_publishes(rig):
    h = HandlerRegistry()
    h.register("sysfs", lambda req: Verdict.value(req.args[0] + 1, "test"))
    h.register("mount", lambda req: Verdict.errno(errno.EACCES, "denied"))
    h.register("getpid", lambda req: Verdict.cont("fine"))
    r = rig(handlers=h)
    r.d.on_message(state(), 10)
    ch = r.engine.channels[r.registry.get("c1").cookie]
    assert ch.rules[139] == (core.ACT_PYTHON, 0)
    ch.items.put(core.Notification(1, 50, 139, args=[41, 0, 0, 0, 0, 0]))
    ch.items.put(core.Notification(2, 50, 165))
    ch.items.put(core.Notification(3, 50, 39))
    ch.items.put(core.Notification(4, 50, 136))
    evs = r.events(4)
    assert [(e.syscall, e.verdict, e.errno, e.reason) for e in evs] == [
        ("sysfs", "value", 0, "test"), ("mount", "errno", errno.EACCES, "denied"),
        ("getpid", "continue", 0, "fine"), ("ustat", "errno", errno.EPERM, "unhandled")]
    assert evs[0].value == 42 and evs[0].container == "c1" and evs[0].comm == "sh"
    assert evs[0].args == [41, 0, 0, 0, 0, 0]
    assert ch.responses == [
        (1, {"value": 42, "error": 0, "cont": False}),
        (2, {"value": 0, "error": errno.EACCES, "cont": False}),
        (3, {"value": 0, "error": 0, "cont": True}),
        (4, {"value": 0, "error": errno.EPERM, "cont": False})]
    assert r.counters.snapshot()["decisions"] == {"value": 1, "errno": 2, "continue": 1}


def test_handler_exception_in_worker_keeps_serving(rig):
    h = HandlerRegistry()
    h.register("sysfs", lambda req: 1 // 0)
    r = rig(handlers=h)
    r.d.on_message(state(), 10)
    ch = r.engine.channels[r.registry.get("c1").cookie]
    ch.items.put(core.Notification(1, 50, 139))
    ch.items.put(core.Notification(2, 50, 139))
    evs = r.events(2)
    assert [e.reason for e in evs] == ["internal error"] * 2
    assert [x[1]["error"] for x in ch.responses] == [errno.EPERM] * 2
    assert r.counters.get("handler_errors", "internal error") == 2


def test_non_native_arch_refused(rig):
    h = HandlerRegistry()
    h.register("sysfs", lambda req: Verdict.value(1, "x"))
    r = rig(handlers=h)
    r.d.on_message(state(), 10)
    ch = r.engine.channels[r.registry.get("c1").cookie]
    ch.items.put(core.Notification(1, 50, 139, arch=0x40000003))  # i386
    (e,) = r.events(1)
    assert (e.verdict, e.errno, e.reason) == ("errno", errno.EPERM, "unsupported arch")


def test_fd_verdict_injects_and_closes_our_copy(rig):
    h = HandlerRegistry()
    fds = []

    def give(req):
        rd, wr = os.pipe()
        os.close(wr)
        fds.append(rd)
        return Verdict.fd(rd, "opened", flags=os.O_CLOEXEC)

    h.register("sysfs", give)
    r = rig(handlers=h)
    r.d.on_message(state(), 10)
    ch = r.engine.channels[r.registry.get("c1").cookie]
    ch.items.put(core.Notification(1, 50, 139))
    (e,) = r.events(1)
    assert (e.verdict, e.value) == ("fd", 7)
    assert ch.addfds == [(1, fds[0], os.O_CLOEXEC)]
    with pytest.raises(OSError):
        os.fstat(fds[0])


def test_target_gone_on_respond_is_counted(rig):
    h = HandlerRegistry()
    h.register("sysfs", lambda req: Verdict.value(1, "x"))
    r = rig(handlers=h)
    r.d.on_message(state(), 10)
    ch = r.engine.channels[r.registry.get("c1").cookie]
    ch.fail_respond = core.TargetGone()
    ch.items.put(core.Notification(1, 50, 139))
    ch.fail_respond = core.TargetGone()
    assert r.until(lambda: r.counters.get("respond_errors", "target gone") == 1)


def test_slow_handler_isolation(rig):
    release = threading.Event()
    h = HandlerRegistry()

    def handler(req):
        if req.container.id == "slow":
            release.wait(5)
        return Verdict.value(1, "x")

    h.register("sysfs", handler)
    r = rig(handlers=h)
    r.d.on_message(state("slow"), 10)
    r.d.on_message(state("fast"), 11)
    slow = r.engine.channels[r.registry.get("slow").cookie]
    fast = r.engine.channels[r.registry.get("fast").cookie]
    slow.items.put(core.Notification(1, 1, 139))
    time.sleep(0.05)
    for i in range(10):
        fast.items.put(core.Notification(10 + i, 2, 139))
    assert r.until(lambda: len(fast.responses) == 10, timeout=2)
    assert slow.responses == []
    release.set()
    assert r.until(lambda: len(slow.responses) == 1)


def test_pump_turns_decisions_into_events(rig):
    r = rig(rules=[Rule("sysfs", "value", value=7)])
    r.d.on_message(state(), 10)
    cookie = r.registry.get("c1").cookie
    r.engine.decisions = [
        core.DecisionRecord(cookie, 1, 50, 139, core.ACT_VALUE, 7,
                            ns_time=1_700_000_000_000_000_000),
        core.DecisionRecord(cookie, 2, 50, 136, core.ACT_ERRNO, errno.EPERM,
                            send_errno=errno.ENOENT),
    ]
    assert r.d.pump_once() == 2
    a, b = r.events(2)
    assert (a.container, a.syscall, a.verdict, a.value, a.reason, a.time) == (
        "c1", "sysfs", "value", 7, "rule", 1_700_000_000.0)
    assert (b.syscall, b.verdict, b.errno, b.reason) == ("ustat", "errno", errno.EPERM,
                                                          "unhandled")
    assert r.counters.get("respond_errors", "target gone") == 1
    assert r.counters.snapshot()["decisions"] == {"value": 1, "errno": 1}


def test_fast_path_events_carry_args_and_cached_comm(rig):
    r = rig(rules=[Rule("sysfs", "value", value=7)])
    comms = {50: "first"}
    r.d._comm_of = lambda pid: comms.get(pid, "")
    r.d.on_message(state(), 10)
    c = r.registry.get("c1")
    r.engine.decisions = [core.DecisionRecord(c.cookie, 1, 50, 139, core.ACT_VALUE, 7,
                                        args=(3, 1, 2, 0, 0, 9))]
    r.d.pump_once()
    comms[50] = "changed"  # read once, when first seen
    r.engine.decisions = [core.DecisionRecord(c.cookie, 2, 50, 139, core.ACT_VALUE, 7)]
    r.d.pump_once()
    a, b = r.events(2)
    assert a.args == [3, 1, 2, 0, 0, 9] and (a.comm, b.comm) == ("first", "first")
    assert c.comms == {50: "first"}


def test_verdict_details_reach_the_event(rig):
    h = HandlerRegistry()
    h.register("mount", lambda req: Verdict.errno(errno.EPERM, "fstype refused",
                                                  {"fstype": "debugfs", "flags": 0}))
    r = rig(handlers=h)
    r.d.on_message(state(), 10)
    c = r.registry.get("c1")
    r.engine.channels[c.cookie].items.put(core.Notification(1, 50, 165))
    (ev,) = r.events(1)
    assert ev.details == {"fstype": "debugfs", "flags": 0}
    assert ev.to_dict()["details"] == {"fstype": "debugfs", "flags": 0}
    assert 50 in c.comms  # cached after answering
    assert Verdict.errno(1, "x").details == {} and "details" not in Event(
        0.0, "c", 1, "", "x", [], "errno", 1, "x").to_dict()


def test_close_releases_everything(rig):
    r = rig()
    r.d.on_message(state("a"), 10)
    r.d.on_message(state("b"), 11)
    chans = list(r.engine.channels.values())
    r.d.close(wait=1)
    assert len(r.registry) == 0
    assert all(ch.closed for ch in chans)
    with pytest.raises(ListenerReject):
        r.d.on_message(state("c"), 12)
