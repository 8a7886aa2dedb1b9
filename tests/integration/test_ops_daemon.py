"""The daemon under a peer playing systemd's side of the notify protocol (READY only once
the sockets accept, STATUS, WATCHDOG pings from the serving loops, STOPPING), and
`interceptctl reload` with a running container."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interceptd import cli
from tests.harness import Bundle, Daemon, Runtime

pytestmark = pytest.mark.integration


class Peer:
    """systemd's end: a datagram socket; records each message with what accepted then."""

    def __init__(self, address: str, state_dir: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1))
        self.sock.settimeout(0.2)
        self.env_value = address
        self.state_dir = state_dir
        self.messages: list[tuple[float, dict[str, str], dict[str, bool]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _accepts(self, name: str) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.state_dir / name))
            except OSError:
                return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(8192).decode()
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.split("\n"))
            probe = {}
            if "READY" in fields:
                probe = {n: self._accepts(n) for n in ("seccomp.sock", "control.sock")}
            self.messages.append((time.monotonic(), fields, probe))

    def sent(self) -> list[str]:
        return [k for _, f, _ in self.messages for k in f]

    def pings_between(self, t0: float, t1: float) -> int:
        return sum(1 for t, f, _ in self.messages if "WATCHDOG" in f and t0 <= t < t1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def peer(request, workdir: Path) -> Iterator[Peer]:
    state = workdir / "daemon0"
    addr = (str(workdir / "notify.sock") if request.param == "path"
            else f"@interceptd-test-{uuid.uuid4().hex}")
    p = Peer(addr, state)
    yield p
    p.close()


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_ready_status_watchdog_stopping(peer: Peer, daemon_factory, workdir: Path):
    d = daemon_factory(env={"NOTIFY_SOCKET": peer.env_value, "WATCHDOG_USEC": "1000000"})
    wait_for(lambda: "READY" in peer.sent())
    fields = [f for _, f, _ in peer.messages]
    before = fields[: next(i for i, f in enumerate(fields) if "READY" in f)]
    # "starting", and the fds a successor will need (handover.py; this peer drops them)
    assert all(set(f) in ({"STATUS"}, {"FDSTORE", "FDNAME"}) for f in before)
    names = {f["FDNAME"] for f in before if "FDSTORE" in f}
    fuse = {n for n in names if n.startswith("fuse-")}  # the emulated files' connection
    assert names - fuse == {"journal", "listener", "control", "runtime"}
    assert len(fuse) == (1 if os.path.exists("/dev/fuse") else 0), names
    [(_, ready, accepted)] = [m for m in peer.messages if "READY" in m[1]]
    assert accepted == {"seccomp.sock": True, "control.sock": True}
    assert ready["STATUS"].startswith("serving 0 container(s)")
    t0 = time.monotonic()
    time.sleep(2.2)
    assert peer.pings_between(t0, time.monotonic()) >= 3  # every 0.5 s
    assert d.stop() == 0
    wait_for(lambda: "STOPPING" in peer.sent())
    assert "WATCHDOG" not in peer.sent()[peer.sent().index("STOPPING"):]


@pytest.mark.parametrize("loop", ["listener", "pump", "control"])
def test_stuck_serving_loop_stops_the_pings(loop: str, daemon_factory, workdir: Path):
    stall = workdir / "stall"
    stall.mkdir()
    peer = Peer(str(workdir / f"notify-{loop}.sock"), workdir / "daemon0")
    try:
        d = daemon_factory(env={"NOTIFY_SOCKET": peer.env_value, "WATCHDOG_USEC": "1000000",
                                "INTERCEPTD_DEBUG_STALL_DIR": str(stall)})
        wait_for(lambda: peer.sent().count("WATCHDOG") >= 2)
        (stall / loop).touch()
        wait_for(lambda: any(f.get("STATUS", "").startswith("stuck: " + loop)
                             for _, f, _ in peer.messages), timeout=5)
        t0 = time.monotonic()
        time.sleep(1.5)
        assert peer.pings_between(t0, time.monotonic()) == 0
        assert "serving loop stuck" in d.log()
        (stall / loop).unlink()  # unstuck: the pings come back
        t1 = time.monotonic()
        wait_for(lambda: peer.pings_between(t1, time.monotonic()) >= 2, timeout=5)
    finally:
        peer.close()


def reload(d: Daemon) -> tuple[int, str]:
    out = io.StringIO()
    rc = cli.main(["--state-dir", str(d.state_dir), "reload"], out=out)
    return rc, out.getvalue()


def test_reload_with_a_running_container(
        runtime: Runtime, bundle_factory: Callable[..., Bundle], daemon_factory,
        new_id: Callable[[str], str]):
    d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 11}])
    b = bundle_factory(args=["sleep", "60"], notify=["sysfs", "ustat"],
                       listener_path=d.listener_path)
    cid = new_id("reload")
    with runtime.started(b, cid):
        attached = d.wait_container(cid)
        assert runtime.exec(cid, ["sys", "sysfs", "3"]).check().stdout == "ret=11 errno=0\n"
        d.config_path.write_text(
            '[daemon]\nlog_level = "info"\n[policy]\nptrace = false\n'
            '[[rules]]\nsyscall = "sysfs"\naction = "value"\nvalue = 22\n'
            '[[rules]]\nsyscall = "ustat"\naction = "errno"\nerrno = "EACCES"\n')
        rc, text = reload(d)
        assert rc == 0, text
        assert "applied: rules (2)" in text
        assert "needs a restart (running values kept): " in text and "policy.ptrace" in text
        assert runtime.exec(cid, ["sys", "sysfs", "3"]).check().stdout == "ret=22 errno=0\n"
        assert runtime.exec(cid, ["sys", "ustat", "0", "b:32"]).check().stdout == \
            "ret=-1 errno=13\n"
        # A rule removed: its syscall fails closed again (EPERM), in the same container.
        d.config_path.write_text('[[rules]]\nsyscall = "sysfs"\naction = "value"\nvalue = 33\n')
        rc, text = reload(d)
        assert rc == 0, text
        assert runtime.exec(cid, ["sys", "ustat", "0", "b:32"]).check().stdout == \
            "ret=-1 errno=1\n"
        # A broken file changes nothing.
        d.config_path.write_text('[[rules]]\nsyscall = "nosuchcall"\naction = "continue"\n')
        rc, _ = reload(d)
        assert rc == 1
        assert runtime.exec(cid, ["sys", "sysfs", "3"]).check().stdout == "ret=33 errno=0\n"
        after = d.container(cid)
        assert after is not None and after["init_pid"] == attached["init_pid"]
        assert after["notify_fds"] == attached["notify_fds"]
