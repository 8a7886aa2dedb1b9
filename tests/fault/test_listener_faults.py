"""Bad input on the daemon's listenerPath socket (issue 2, point 4), against
a real daemon: each case is refused with a counter, every fd it carried is
closed, the daemon stays up, and a real container still gets its answers."""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import Bundle, Daemon, Runtime

pytestmark = pytest.mark.fault

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"
RULES = [{"syscall": "sysfs", "action": "value", "value": 99}]
LISTENER_TIMEOUT = 2.0  # interceptd.listener.TIMEOUT


def valid_message(cid: str = "fault-msg", pid: int | None = None) -> bytes:
    doc = json.loads((DATA / "runc-init.json").read_bytes())
    doc["state"]["id"] = cid
    if pid is not None:
        doc["pid"] = doc["state"]["pid"] = pid
    return json.dumps(doc).encode()


def counter(d: Daemon, name: str, label: str) -> int:
    return d.control("status")["counters"].get(name, {}).get(label, 0)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def settled_fd_count(d: Daemon, timeout: float = 5) -> int:
    """The daemon's fd count once it holds still: the warm-up container's attach hooks
    (its native helper's start) run on a thread of their own and may still hold an fd
    or two right after the container is gone."""
    deadline = time.monotonic() + timeout
    last = d.fd_count()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = d.fd_count()
        if now == last:
            return now
        last = now
    return last


def closed_by_peer(read_end: int, timeout: float) -> bool:
    """True once every other copy of the pipe's write end is closed (EOF)."""
    ready, _, _ = select.select([read_end], [], [], timeout)
    return bool(ready) and os.read(read_end, 1) == b""


@contextlib.contextmanager
def pipes(n: int) -> Iterator[list[tuple[int, int]]]:
    made = [os.pipe() for _ in range(n)]
    try:
        yield made
    finally:
        for r, w in made:
            for fd in (r, w):
                with contextlib.suppress(OSError):
                    os.close(fd)


def connect(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(d.listener_path)
    return s


def send(s: socket.socket, payload: bytes, fds: list[int]) -> None:
    """The first 64 KiB with the fds (one sendmsg, as the runtimes do), then
    the rest; the daemon may hang up early on oversized input."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    first, rest = payload[:65536], payload[65536:]
    try:
        s.sendmsg([first], anc)
        if rest:
            s.sendall(rest)
    except (BrokenPipeError, ConnectionResetError):
        pass


def container_still_works(runtime: Runtime, bundle_factory: Callable[..., Bundle], d: Daemon,
                          new_id: Callable[[str], str]) -> None:
    b = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                       listener_path=d.listener_path)
    assert runtime.run(b, new_id("after")).check().stdout.strip() == "ret=99 errno=0"


@dataclass(frozen=True)
class Case:
    payload: bytes
    nfds: int  # pipe write ends sent along
    reason: str  # the label of listener_errors
    eof: bool = True  # half-close after sending (a well-behaved client)


def _missing_fields() -> bytes:
    doc = json.loads(valid_message())
    del doc["state"]
    return json.dumps(doc).encode()


CASES = {
    "non-json": Case(b"this is not json at all\n", 1, "not json"),
    "missing-fields": Case(_missing_fields(), 1, "missing field"),
    "no-fd": Case(valid_message(), 0, "no fd"),
    "several-fds": Case(valid_message(), 3, "several fds"),
    "not-seccomp-fd": Case(valid_message(), 1, "not a seccomp fd"),
    "1MiB-payload": Case(b'{"ociVersion": "' + b"a" * (1 << 20) + b'"}', 1, "too large"),
    "stalling-client": Case(b'{"ociVersion": "1.0.2", ', 1, "timeout", eof=False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_and_daemon_keeps_serving(
        name: str, runtime_factory: Callable[[str], Runtime],
        bundle_factory: Callable[..., Bundle], daemon_factory: Callable[..., Daemon],
        new_id: Callable[[str], str]):
    case = CASES[name]
    runtime = runtime_factory("runc")
    d = daemon_factory(rules=RULES)
    container_still_works(runtime, bundle_factory, d, new_id)  # warm: lazily made fds
    baseline = settled_fd_count(d)
    before = counter(d, "listener_errors", case.reason)
    with pipes(case.nfds) as ps, connect(d) as s:
        send(s, case.payload, [w for _, w in ps])
        for _, w in ps:
            os.close(w)  # now only the daemon's copies keep each pipe open
        if case.eof:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        # The daemon closes every fd it got and hangs up.
        for r, _ in ps:
            assert closed_by_peer(r, LISTENER_TIMEOUT + 3), "daemon kept a received fd open"
        wait_for(lambda: counter(d, "listener_errors", case.reason) == before + 1,
                 LISTENER_TIMEOUT + 3, f"listener_errors[{case.reason}]")
        s.settimeout(LISTENER_TIMEOUT + 3)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(1) == b"", "daemon left the connection open"
        if name == "stalling-client":
            assert time.monotonic() - started < LISTENER_TIMEOUT + 2
    assert d.alive()
    wait_for(lambda: d.fd_count() == baseline, 5, f"fd count back to {baseline}")
    container_still_works(runtime, bundle_factory, d, new_id)
    assert d.alive()


def test_stalling_client_does_not_delay_others(
        runtime_factory: Callable[[str], Runtime], bundle_factory: Callable[..., Bundle],
        daemon_factory: Callable[..., Daemon], new_id: Callable[[str], str]):
    runtime = runtime_factory("runc")
    d = daemon_factory(rules=RULES)
    stallers = [connect(d) for _ in range(8)]
    try:
        t0 = time.monotonic()
        container_still_works(runtime, bundle_factory, d, new_id)
        assert time.monotonic() - t0 < LISTENER_TIMEOUT, "a stalled client delayed a container"
    finally:
        for s in stallers:
            s.close()
    assert d.alive()


def test_id_of_another_container_is_refused(
        runtime: Runtime, bundle_factory: Callable[..., Bundle],
        daemon_factory: Callable[..., Daemon], new_id: Callable[[str], str],
        helper_bins: dict[str, Path], workdir: Path):
    d = daemon_factory(rules=RULES)
    b = bundle_factory(args=["sleep", "60"], notify=["sysfs"], listener_path=d.listener_path)
    cid = new_id("victim")
    with runtime.started(b, cid):
        victim = d.wait_container(cid)
        before = counter(d, "listener_errors", "duplicate id")
        # A real seccomp notify fd, from another process, claiming the same id.
        msg = workdir / "dup.json"
        doc = json.loads(valid_message(cid))
        doc["pid"] = doc["state"]["pid"] = 0
        text = json.dumps(doc).replace('"pid": 0', '"pid": @PID@')
        msg.write_text(text.replace(str(b.path), "/somewhere/else"))
        res = subprocess.run([str(helper_bins["notify_client"]), d.listener_path, str(msg)],
                             capture_output=True, text=True, timeout=15)
        assert res.returncode == 0, res.stderr
        # Refused: the daemon closed the fd, so the notified call fails with ENOSYS.
        assert res.stdout.strip() == "ret=-1 errno=38"
        wait_for(lambda: counter(d, "listener_errors", "duplicate id") == before + 1, 5,
                 "listener_errors[duplicate id]")
        after = d.container(cid)
        assert after is not None and after["init_pid"] == victim["init_pid"]
        # The real container keeps its answers, also for a newly exec'd process.
        assert runtime.exec(cid, ["sys", "sysfs", "3"]).check().stdout.strip() == "ret=99 errno=0"
    assert d.alive()
    container_still_works(runtime, bundle_factory, d, new_id)
