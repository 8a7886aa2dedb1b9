"""Shared set-up of the C core's tests (no tests here): the core_target helper,
started with a socketpair that brings back its seccomp listener fd."""

from __future__ import annotations

import array
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELPER_SRC = Path(__file__).resolve().parents[1] / "helpers" / "core_target.c"
_built: Path | None = None

SYSFS = 139
GETPGID = 121
GETSID = 124
TIMES = 100  # times(2): not used by the helper itself


def helper() -> Path:
    """Compile core_target once per process."""
    global _built
    if _built is None:
        out = Path(tempfile.mkdtemp(prefix="core-target-")) / "core_target"
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                        str(HELPER_SRC)], check=True, capture_output=True, text=True)
        _built = out
    return _built


def recv_fd(sock: socket.socket) -> int:
    fds = array.array("i")
    msg, anc, _flags, _addr = sock.recvmsg(1, socket.CMSG_LEN(fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: fds.itemsize])
    if msg != b"L" or len(fds) != 1:
        raise RuntimeError("core_target sent no listener")
    return fds[0]


@dataclass
class Target:
    proc: subprocess.Popen[str]
    sock: socket.socket
    listener: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self) -> None:
        """Let the helper start its commands (after the listener is attached)."""
        self.sock.send(b"g")

    def finish(self, timeout: float = 10.0) -> list[str]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return out.splitlines()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.sock.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.proc.stderr:
            self.proc.stderr.close()


def start(nrs: list[int], *cmds: str) -> Target:
    """Start core_target notifying `nrs`; returns once its listener fd is here
    (owned by the caller: hand it to Engine.attach or close it)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [str(helper()), str(theirs.fileno()), ",".join(map(str, nrs)), *cmds],
        pass_fds=[theirs.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    theirs.close()
    mine.settimeout(10)
    try:
        fd = recv_fd(mine)
    except BaseException:
        proc.kill()
        proc.wait()
        mine.close()
        raise
    return Target(proc, mine, fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def zombies_of(pid: int) -> list[int]:
    """Children of `pid` in state Z."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            out.append(int(d))
    return out


def drain(engine: Any, n: int, timeout: float = 5.0) -> list[Any]:
    """The engine's next `n` decisions: they are recorded after the answer (off the
    target's round trip), so the last may land after the target has exited."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += engine.drain_decisions()
        if len(got) < n:
            time.sleep(0.01)
    return got
