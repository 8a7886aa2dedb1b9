"""The control protocol against a daemon-less ControlServer with fake providers."""

import contextlib
import json
import os
import socket
import threading
import time

import pytest

from interceptd import control
from interceptd.control import ControlServer
from interceptd.events import Counters, Event, EventBus


def ev(i, **kw):
    d = dict(time=1.0, container="c1", pid=i, comm="sh", syscall="sysfs", args=[],
             verdict="errno", errno=1, reason="rule")
    d.update(kw)
    return Event(**d)


class Fixture:
    def __init__(self, tmp_path, **kw):
        self.bus = EventBus()
        self.counters = Counters()
        self.path = str(tmp_path / "control.sock")
        self.server = ControlServer(
            self.path,
            status=lambda: {"version": "t", "pid": 1, "containers": 2,
                            "counters": self.counters.snapshot()},
            containers=lambda: [{"id": "a"}, {"id": "b"}],
            bus=self.bus, counters=self.counters, **kw)
        self.server.start()

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.path)
        return s, s.makefile("rb")

    def wait_subscribers(self, n):
        deadline = time.monotonic() + 5
        while self.bus.subscribers != n:
            assert time.monotonic() < deadline
            time.sleep(0.01)


@pytest.fixture
def ctl(tmp_path):
    fs = []

    def make(**kw):
        f = Fixture(tmp_path, **kw)
        fs.append(f)
        return f

    yield make
    for f in fs:
        f.server.stop()


def test_socket_mode_and_unlink(ctl):
    f = ctl()
    assert os.stat(f.path).st_mode & 0o777 == 0o600
    f.server.stop()
    assert not os.path.exists(f.path)


def test_status_and_containers(ctl):
    f = ctl()
    f.counters.inc("listener_errors", "no fd")
    st = control.request(f.path, {"cmd": "status"})
    assert st == {"ok": True, "version": "t", "pid": 1, "containers": 2,
                  "counters": {"listener_errors": {"no fd": 1}}}
    assert control.request(f.path, {"cmd": "containers"}) == {
        "ok": True, "containers": [{"id": "a"}, {"id": "b"}]}


def test_several_requests_on_one_connection(ctl):
    f = ctl()
    s, r = ctl_conn = f.connect()
    s.sendall(b'{"cmd":"status"}\n\n{"cmd":"containers"}\n')
    assert json.loads(r.readline())["version"] == "t"
    assert len(json.loads(r.readline())["containers"]) == 2
    s.close()
    del ctl_conn


@pytest.mark.parametrize(
    ("line", "error"),
    [(b"not json\n", "bad request"), (b"[1]\n", "bad request"),
     (b'{"cmd":"reboot"}\n', "unknown command"), (b"{}\n", "unknown command")],
)
def test_bad_requests_answered_and_counted(ctl, line, error):
    f = ctl()
    s, r = f.connect()
    s.sendall(line)
    resp = json.loads(r.readline())
    assert resp["ok"] is False and error in resp["error"]
    s.sendall(b'{"cmd":"status"}\n')  # the connection still works
    assert json.loads(r.readline())["ok"] is True
    s.close()
    assert sum(f.counters.snapshot()["control_errors"].values()) == 1


def test_overlong_line_drops_client_only(ctl):
    f = ctl()
    s, _ = f.connect()
    s.sendall(b"x" * (control.MAX_LINE + 70000))
    s.settimeout(5)
    with contextlib.suppress(ConnectionResetError):  # reset: our bytes were unread
        assert s.recv(10) == b""  # hung up
    s.close()
    assert control.request(f.path, {"cmd": "status"})["ok"]


def test_trace_filters_and_count(ctl):
    f = ctl()
    s, r = f.connect()
    s.sendall(b'{"cmd":"trace","container":"c1","syscall":"sysfs","verdict":"value",'
              b'"count":2}\n')
    assert json.loads(r.readline()) == {"ok": True, "trace": True}
    f.wait_subscribers(1)
    f.bus.publish(ev(1, verdict="value", errno=0, value=5))
    f.bus.publish(ev(2, container="other", verdict="value"))
    f.bus.publish(ev(3, syscall="mount", verdict="value"))
    f.bus.publish(ev(4))
    f.bus.publish(ev(5, verdict="value", errno=0))
    f.bus.publish(ev(6, verdict="value", errno=0))
    got = [json.loads(r.readline()) for _ in range(3)]
    assert [g.get("pid") for g in got[:2]] == [1, 5]
    assert got[0]["value"] == 5 and got[0]["source"] == "seccomp"
    assert got[2] == {"end": True, "dropped": 0}
    assert r.readline() == b""  # closed after the end
    f.wait_subscribers(0)


def test_trace_bad_filter(ctl):
    f = ctl()
    resp = control.request(f.path, {"cmd": "trace", "count": "many"})
    assert resp["ok"] is False
    resp = control.request(f.path, {"cmd": "trace", "syscall": 3})
    assert resp["ok"] is False


def test_trace_client_hangup_unsubscribes(ctl):
    f = ctl()
    s, r = f.connect()
    s.sendall(b'{"cmd":"trace"}\n')
    r.readline()
    f.wait_subscribers(1)
    r.close()
    s.close()
    f.wait_subscribers(0)


def test_stalled_trace_reader_never_blocks_publisher_or_others(ctl):
    f = ctl(send_timeout=0.5)
    s, r = f.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b'{"cmd":"trace"}\n')
    r.readline()
    f.wait_subscribers(1)
    t0 = time.monotonic()
    for i in range(50000):
        f.bus.publish(ev(i, comm="x" * 200))
    assert time.monotonic() - t0 < 5
    assert f.bus.dropped > 0
    # another client is served meanwhile
    assert control.request(f.path, {"cmd": "status"}, timeout=2)["ok"]
    f.wait_subscribers(0)  # the stalled client was dropped after its send timeout
    s.close()


def test_idle_client_does_not_block_others(ctl):
    f = ctl(idle_timeout=0.3)
    idle = [f.connect()[0] for _ in range(5)]
    done = threading.Event()

    def ask():
        control.request(f.path, {"cmd": "status"}, timeout=2)
        done.set()

    threading.Thread(target=ask).start()
    assert done.wait(3)
    for s in idle:
        s.settimeout(2)
        assert s.recv(1) == b""  # dropped after the idle timeout
        s.close()


def test_stop_ends_trace(ctl):
    f = ctl()
    s, r = f.connect()
    s.sendall(b'{"cmd":"trace"}\n')
    r.readline()
    f.wait_subscribers(1)
    f.server.stop()
    assert json.loads(r.readline())["end"] is True
    s.close()
