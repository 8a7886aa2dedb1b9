"""interceptd.sdnotify against a peer socket playing systemd's side."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from interceptd.sdnotify import Notifier


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(2)
    yield s, path
    s.close()


def recv(s: socket.socket) -> dict[str, str]:
    data = s.recv(8192).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_path_socket_messages(peer):
    s, path = peer
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready(status="serving")
    assert recv(s) == {"READY": "1", "STATUS": "serving"}
    assert n.status("two\nWATCHDOG=1")
    assert recv(s) == {"STATUS": "two WATCHDOG=1"}  # no forged assignment
    assert n.stopping()
    assert recv(s) == {"STOPPING": "1"}
    assert n.reloading()
    assert recv(s) == {"RELOADING": "1"}
    n.close()


def test_abstract_socket():
    name = f"interceptd-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()  # sent even without WATCHDOG_USEC: the caller decides
        assert recv(s) == {"WATCHDOG": "1"}
    finally:
        s.close()


def test_without_socket_is_a_noop():
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog_interval() is None


def test_gone_manager_is_not_an_error(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert n.ready() is False


def test_watchdog_usec_and_pid(peer):
    _, path = peer
    mine = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert mine.watchdog_interval() == 1.5
    assert mine.watchdog_timeout == 3.0
    ours = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000",
                     "WATCHDOG_PID": str(os.getpid())})
    assert ours.watchdog_interval() == 1.5
    # Inherited by a process the watchdog is not meant for: no pings.
    other = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000",
                      "WATCHDOG_PID": "1"})
    assert other.watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "x"}).watchdog_interval() is None
