"""interceptd/unixserver.py: the accept loop of seccomp.sock, control.sock and runtime.sock
(acceptors, refusal over the cap, the hand-over's quiesce and adoption, stop)."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from interceptd.unixserver import UnixServer


class Echo(UnixServer):
    name = "test-echo"
    max_clients = 2

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.refused = 0
        self.threads: set[int] = set()
        self.release = threading.Event()
        self.release.set()

    def handle(self, conn: socket.socket) -> None:
        self.threads.add(threading.get_ident())
        data = conn.recv(64)
        if data == b"boom":
            raise RuntimeError("a handler's bug")
        self.release.wait(5)
        conn.sendall(data.upper())

    def refuse(self, conn: socket.socket) -> None:
        self.refused += 1


def ask(path: str, msg: bytes = b"hi", timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(msg)
        return s.recv(64)


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Echo]:
    srv = Echo(str(tmp_path / "echo.sock"))
    srv.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.stop()


def test_socket_is_private_and_serves(server: Echo) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert ask(server.path) == b"HI"


def test_sequential_clients_start_no_thread(server: Echo) -> None:
    """The acceptor that takes a connection serves it and goes back to accept(). Each
    client waits until the server is back at rest: a client arriving while the acceptor
    that served the last one is still on its way back finds fewer idle acceptors and
    rightly makes the server start one (what a loaded machine did here)."""
    for _ in range(20):
        wait_for(lambda: server._idle == server.spare)
        assert ask(server.path) == b"HI"
    assert len(server.threads) <= server.spare + 1
    wait_for(lambda: len(server._threads) == server.spare)


def test_over_the_cap_is_refused_and_a_bug_does_not_kill_the_server(server: Echo) -> None:
    server.release.clear()
    held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for s in held:
            s.connect(server.path)
            s.sendall(b"x")
        wait_for(lambda: len(server._serving) == 2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(server.path)
            assert s.recv(64) == b""  # closed at once
        assert server.refused == 1
        server.release.set()
        for s in held:
            assert s.recv(64) == b"X"
    finally:
        for s in held:
            s.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.path)
        s.sendall(b"boom")
        assert s.recv(64) == b""
    assert ask(server.path) == b"HI"


def test_quiesce_keeps_clients_in_the_backlog_for_a_successor(tmp_path: Path) -> None:
    old = Echo(str(tmp_path / "echo.sock"))
    old.start()
    new = Echo(old.path)
    try:
        assert ask(old.path) == b"HI"
        old.quiesce()
        assert old._threads == set()
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(ask(old.path, b"late")))
        t.start()
        time.sleep(0.5)
        assert got == []  # waiting in the backlog, not refused
        assert old.sock is not None
        fd = os.dup(old.sock.fileno())  # what the hand-over passes on
        new.start(socket.socket(fileno=fd))
        t.join(5)
        assert got == [b"LATE"]
    finally:
        new.stop()
        if old.sock is not None:
            old.sock.close()
    assert not os.path.exists(old.path)


def test_stop_unlinks_and_waits_for_connections_being_served(server: Echo) -> None:
    server.release.clear()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(server.path)
        s.sendall(b"x")
        wait_for(lambda: len(server._serving) == 1)
        threading.Timer(0.3, server.release.set).start()
        server.stop()
        assert not os.path.exists(server.path)
        assert s.recv(64) == b"X"  # finished, not cut
        assert server._threads == set()
    finally:
        s.close()
