"""A test peer playing systemd's side of a Type=notify service with an fd store
(this VM's PID 1 is not systemd), following its documented semantics:

- `$NOTIFY_SOCKET` is an abstract datagram socket; messages are `KEY=VALUE` lines
  (sd_notify(3)). `FDSTORE=1` + `FDNAME=` keeps the attached fds under that name,
  `FDSTOREREMOVE=1` + `FDNAME=` drops every fd of the name (sd_pid_notify_with_fds(3));
  an fd already stored (the same open file) is not stored twice; `MAINPID=` names the
  main process from then on; `READY=1`, `STATUS=`, `STOPPING=1` are recorded.
- Before a (re)start, stored fds that poll POLLHUP/POLLERR are dropped (systemd
  drops those as they happen), the rest are passed as fds 3, 4, … with `LISTEN_FDS`,
  `LISTEN_FDNAMES` and `LISTEN_PID` (sd_listen_fds(3)).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import os
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.harness.daemon import INTERCEPTD, REPO, Daemon

_libc = ctypes.CDLL(None, use_errno=True)
SYS_kcmp = 312  # x86_64
KCMP_FILE = 0


def same_file(a: int, b: int) -> bool:
    pid = os.getpid()
    return _libc.syscall(SYS_kcmp, pid, pid, KCMP_FILE, a, b) == 0


class SystemdPeer:
    def __init__(self) -> None:
        self.address = f"@interceptd-peer-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.1)
        self.store: list[tuple[str, int]] = []
        self.messages: list[dict[str, str]] = []
        self.main_pid = 0
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Waits without the lock: drain() (before a restart) must not wait out this
            # timeout, which systemd has no equivalent of (it added up to 100 ms to the
            # pause bench_restart measures).
            if not select.select([self.sock], [], [], 0.1)[0]:
                continue
            with self._recv_lock:
                try:
                    self._recv_one(0)
                except (BlockingIOError, TimeoutError):
                    continue  # drain() took it
                except OSError as e:
                    if not self._stop.is_set():
                        self.errors.append(repr(e))
                    return
                except Exception as e:  # a bug here must show, not silence the peer
                    self.errors.append(repr(e))

    def drain(self) -> None:
        """Handle every message already queued: systemd reads its notify socket before
        it acts on the main process's exit."""
        with self._recv_lock:
            while True:
                try:
                    self._recv_one(0)
                except (BlockingIOError, TimeoutError):
                    return

    def _recv_one(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        data, anc, _flags, _ = self.sock.recvmsg(
            4096, socket.CMSG_SPACE(253 * 4), socket.MSG_CMSG_CLOEXEC)
        fds: list[int] = []
        for level, typ, payload in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                fds.extend(a)
        msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self._handle(msg, fds)

    def _handle(self, msg: dict[str, str], fds: list[int]) -> None:
        with self._lock:
            self.messages.append(msg)
            name = msg.get("FDNAME", "stored")
            if msg.get("FDSTORE") == "1":
                for fd in fds:
                    if any(same_file(fd, old) for _, old in self.store):
                        os.close(fd)
                    else:
                        self.store.append((name, fd))
                fds = []
            if msg.get("FDSTOREREMOVE") == "1":
                for n, fd in [x for x in self.store if x[0] == name]:
                    os.close(fd)
                    self.store.remove((n, fd))
            if msg.get("MAINPID", "").isdigit():
                self.main_pid = int(msg["MAINPID"])
            if msg.get("READY") == "1":
                self.ready.set()
        for fd in fds:  # fds on a message that is not FDSTORE=1 are closed
            os.close(fd)

    def stored_names(self) -> list[str]:
        with self._lock:
            return [n for n, _ in self.store]

    def _prune(self) -> None:
        with self._lock:
            for n, fd in list(self.store):
                p = select.poll()
                p.register(fd, 0)
                if any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0)):
                    os.close(fd)
                    self.store.remove((n, fd))

    def spawn(self, argv: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start `argv` as the service with the stored fds at 3, 4, …"""
        self.drain()
        assert not self.errors, self.errors
        self._prune()
        self.ready.clear()
        with self._lock:
            stored = list(self.store)
        # Out of the way of 3..3+n first, then moved in place by a small perl
        # trampoline (bash keeps fds from 10 up for itself), which also sets
        # LISTEN_PID to its own pid: the one the service keeps across exec.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for _, fd in stored]
        moves = ";".join(f"POSIX::dup2({h},{3 + i}) or die;POSIX::close({h})"
                         for i, h in enumerate(high))
        script = f"use POSIX;{moves};$ENV{{LISTEN_PID}}=$$;exec {{$ARGV[0]}} @ARGV or die"
        env = dict(env, NOTIFY_SOCKET=self.address, LISTEN_FDS=str(len(stored)),
                   LISTEN_FDNAMES=":".join(n for n, _ in stored))
        env.pop("LISTEN_PID", None)
        try:
            proc = subprocess.Popen(["/usr/bin/perl", "-e", script, *argv], env=env,
                                    pass_fds=high, **kw)
        finally:
            for h in high:
                os.close(h)
        self.main_pid = proc.pid
        return proc

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        with self._lock:
            for _, fd in self.store:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.store.clear()


class PeerDaemon(Daemon):
    """The harness Daemon, started (and restarted) by a SystemdPeer; `pid` follows
    MAINPID= (a hand-over changes it)."""

    def __init__(self, state_dir: Path, config_text: str = "", **kw: Any) -> None:
        super().__init__(state_dir, config_text, **kw)
        self.peer = SystemdPeer()

    @property
    def pid(self) -> int:
        return self.peer.main_pid

    def start(self, timeout: float = 20) -> PeerDaemon:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath, **(self.env or {}))
        with open(self.log_path, "ab") as log:
            self.proc = self.peer.spawn(
                [str(INTERCEPTD), "--state-dir", str(self.state_dir),
                 "--metrics-address", "off", "--config", str(self.config_path),
                 "--log-level", self.log_level, *self.args],
                env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if not self.peer.ready.wait(timeout):
            raise TimeoutError(f"interceptd never sent READY=1 (peer errors: "
                               f"{self.peer.errors}):\n{self.log()[-4000:]}")
        return self

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return self._state(self.pid) not in ("Z", "X")

    @staticmethod
    def _state(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return "X"

    def kill(self) -> None:
        """SIGKILL the main process and reap it (a crash)."""
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        if self.proc is not None and self.proc.pid == pid:
            self.proc.wait(10)
        else:
            _wait_gone(pid)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        pid = self.pid
        rc: int | None = None
        if self.alive():
            os.kill(pid, signal.SIGTERM)
        if self.proc.pid == pid:
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = -signal.SIGKILL
        else:
            if self.proc.poll() is None:
                self.proc.wait(timeout)
            rc = 0 if _wait_gone(pid, timeout) else -signal.SIGKILL
            if rc:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.peer.close()
        return rc


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if PeerDaemon._state(pid) == "Z":
            return True  # not our child: init reaps it
        time.sleep(0.01)
    return False
