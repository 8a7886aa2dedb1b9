"""A tiny OCI listenerPath server for tests that need no daemon: it records
every message (state JSON + the fds passed) and can answer notifications
itself with a fixed value, in pure Python (ioctl on the notify fd)."""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

# _IOWR('!', 0, struct seccomp_notif) / _IOWR('!', 1, struct seccomp_notif_resp)
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]
_RESP = struct.Struct("=QqiI")  # id, val, error, flags


@dataclass
class Message:
    payload: bytes
    nfds: int


@dataclass
class StubListener:
    """Serve path in a thread. answer=None: close each received fd at once
    (notified syscalls then fail with ENOSYS); answer=(value, errno): answer
    every notification on every received fd with that until stop()."""

    path: Path
    answer: tuple[int, int] | None = None
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(16)
        self._stop_r, self._stop_w = os.pipe()
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                watched = [self._sock.fileno(), self._stop_r, *self._fds]
            ready, _, _ = select.select(watched, [], [])
            if self._stop_r in ready:
                return
            if self._sock.fileno() in ready:
                self._accept()
            for fd in ready:
                if fd in self._fds:
                    self._respond(fd)

    def _accept(self) -> None:
        conn, _ = self._sock.accept()
        with conn:
            fds = array.array("i")
            chunks = []
            while True:
                data, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_LEN(16 * fds.itemsize))
                for level, typ, cdata in anc:
                    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                        fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                if not data:
                    break
                chunks.append(data)
                # runc keeps the connection open after its one message, so
                # stop as soon as what arrived is a complete JSON document.
                try:
                    json.loads(b"".join(chunks))
                    break
                except ValueError:
                    continue
        self.messages.append(Message(b"".join(chunks), len(fds)))
        for fd in fds:
            if self.answer is None:
                os.close(fd)
            else:
                with self._lock:
                    self._fds.append(fd)

    def _respond(self, fd: int) -> None:
        buf = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf)
        except OSError:
            # Every process behind the filter is gone (ENOENT + POLLHUP).
            with self._lock:
                self._fds.remove(fd)
            os.close(fd)
            return
        notif_id = _NOTIF.unpack(buf)[0]
        assert self.answer is not None
        value, err = self.answer
        resp = bytearray(_RESP.pack(notif_id, value, -err if err else 0, 0))
        with contextlib.suppress(OSError):  # the target may have died meanwhile
            fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, resp)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self._sock.close()
        for fd in (self._stop_r, self._stop_w, *self._fds):
            os.close(fd)
        self._fds.clear()


