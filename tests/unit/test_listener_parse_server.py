"""The listener server against bad clients (unix sockets only, no kernel seccomp)."""

import contextlib
import os
import socket
import threading
import time

import pytest

from interceptd import listener as lmod
from interceptd.events import Counters
from interceptd.listener import Listener, ListenerReject

GOOD = (
    b'{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":%d,"metadata":"",'
    b'"state":{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":%d,"bundle":"/b"}}'
) % (os.getpid(), os.getpid())


def open_fds():
    return set(os.listdir("/proc/self/fd"))


class Server:
    def __init__(self, tmp_path, on_message=None, **kw):
        self.counters = Counters()
        self.got = []
        self.ev = threading.Event()
        self.path = str(tmp_path / "seccomp.sock")

        def record(state, fd):
            self.got.append((state, fd))
            self.ev.set()

        self.listener = Listener(self.path, on_message or record, self.counters, **kw)
        self.listener.start()

    def errors(self):
        return self.counters.snapshot().get("listener_errors", {})

    def wait_errors(self, n, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(self.errors().values()) >= n:
                return self.errors()
            time.sleep(0.01)
        raise AssertionError(f"errors: {self.errors()}")


@pytest.fixture
def server(tmp_path):
    servers = []

    def make(**kw):
        s = Server(tmp_path, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.listener.stop()
        for _, fd in s.got:
            os.close(fd)


def send(path, data, fds=(), close=True):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    if fds:
        socket.send_fds(s, [data], list(fds))
    elif data:
        s.sendall(data)
    if close:
        s.close()
    return s


def test_socket_mode(server):
    s = server()
    assert os.stat(s.path).st_mode & 0o777 == 0o600


def test_good_message_hands_over_fd(server, monkeypatch):
    monkeypatch.setattr(lmod, "is_seccomp_notify_fd", lambda fd: True)
    s = server()
    r, w = os.pipe()
    send(s.path, GOOD, [r], close=False)
    assert s.ev.wait(5)
    state, fd = s.got[0]
    assert state.state.id == "c1"
    assert fd not in (r, w)
    os.write(w, b"x")
    assert os.read(fd, 1) == b"x"  # the very pipe we sent
    os.close(r)
    os.close(w)
    assert s.errors() == {}


def test_good_message_without_close(server, monkeypatch):
    """Complete JSON is handled at once, even if the client keeps the socket open."""
    monkeypatch.setattr(lmod, "is_seccomp_notify_fd", lambda fd: True)
    s = server(timeout=30)
    r, w = os.pipe()
    conn = send(s.path, GOOD, [r], close=False)
    assert s.ev.wait(2)
    conn.close()
    os.close(r)
    os.close(w)


@pytest.mark.parametrize(
    ("data", "nfds", "reason"),
    [
        (b"not json at all", 1, "not json"),
        (b'{"ociVersion":"1"}', 1, "missing field"),
        (GOOD, 0, "no fd"),
        (GOOD, 3, "several fds"),
        (GOOD, 1, "not a seccomp fd"),
        (b"", 0, "empty message"),
    ],
)
def test_bad_input_closes_fds(server, data, nfds, reason):
    s = server()
    pipes = [os.pipe() for _ in range(nfds)]
    before = open_fds()
    send(s.path, data, [r for r, _ in pipes])
    assert s.wait_errors(1) == {reason: 1}
    time.sleep(0.05)
    assert open_fds() == before  # every received fd closed again
    for r, w in pipes:
        os.close(r)
        os.close(w)
    assert s.got == []


def test_too_large(server):
    s = server()
    r, w = os.pipe()
    before = open_fds()
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(s.path)
    payload = b"{" + b" " * (1 << 20) + b"}"
    socket.send_fds(c, [payload[:4096]], [r])
    with contextlib.suppress(OSError):  # the daemon hangs up after the cap
        c.sendall(payload[4096:])
    c.close()
    assert s.wait_errors(1) == {"too large": 1}
    time.sleep(0.05)
    assert open_fds() == before
    os.close(r)
    os.close(w)


def test_stalled_client_times_out_and_does_not_block_others(server, monkeypatch):
    monkeypatch.setattr(lmod, "is_seccomp_notify_fd", lambda fd: True)
    s = server(timeout=0.5)
    stalled = [send(s.path, b'{"ociVersion":', close=False) for _ in range(3)]
    t0 = time.monotonic()
    r, w = os.pipe()
    send(s.path, GOOD, [r])
    assert s.ev.wait(5)
    assert time.monotonic() - t0 < 0.4  # served while the others stall
    assert s.wait_errors(3) == {"timeout": 3}
    for c in stalled:
        c.close()
    os.close(r)
    os.close(w)


def test_connection_limit(server):
    s = server(timeout=1.0, max_connections=2)
    stalled = [send(s.path, b"", close=False) for _ in range(3)]
    errs = s.wait_errors(1)
    assert errs.get("too many connections") == 1
    for c in stalled:
        c.close()


def test_on_message_reject_closes_fd(server, monkeypatch):
    monkeypatch.setattr(lmod, "is_seccomp_notify_fd", lambda fd: True)

    def refuse(state, fd):
        raise ListenerReject("duplicate id", state.state.id)

    s = server(on_message=refuse)
    r, w = os.pipe()
    before = open_fds()
    send(s.path, GOOD, [r])
    assert s.wait_errors(1) == {"duplicate id": 1}
    time.sleep(0.05)
    assert open_fds() == before
    os.close(r)
    os.close(w)


def test_on_message_crash_is_contained(server, monkeypatch):
    monkeypatch.setattr(lmod, "is_seccomp_notify_fd", lambda fd: True)

    def boom(state, fd):
        raise RuntimeError("bug")

    s = server(on_message=boom)
    for _ in range(2):
        r, w = os.pipe()
        send(s.path, GOOD, [r])
        os.close(r)
        os.close(w)
    assert s.wait_errors(2) == {"internal error": 2}


def test_stop_unlinks(server):
    s = server()
    s.listener.stop()
    assert not os.path.exists(s.path)


def test_is_seccomp_notify_fd_false_for_pipe():
    r, w = os.pipe()
    try:
        assert not lmod.is_seccomp_notify_fd(r)
        assert not lmod.is_seccomp_notify_fd(99999)
    finally:
        os.close(r)
        os.close(w)
