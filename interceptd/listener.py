"""The OCI runtime-spec seccomp `listenerPath` server.

runc and crun connect once per process that gets a filter with a notify action
and send one message: the ContainerProcessState JSON with the notify fd
attached by SCM_RIGHTS (`fds: ["seccompFd"]`). runc sends compact JSON, crun
pretty-printed JSON with `ociVersion` "0.2.0"; neither waits for an answer.

Each connection is served by one thread (interceptd/unixserver.py) with a deadline
and a size cap, so a stalled or hostile client costs one thread for a bounded time and
never delays accepting or anyone else's container.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from interceptd.events import Counters
from interceptd.ocistate import MAX_MESSAGE, ListenerReject, ProcessState, parse_state
from interceptd.unixserver import UnixServer

log = logging.getLogger("interceptd.listener")

SECCOMP_FD_LINK = "anon_inode:seccomp notify"
MAX_FDS = 8  # room to notice (and close) extra fds; the protocol carries one
TIMEOUT = 2.0
MAX_CONNECTIONS = 256  # concurrent connections being read; more are refused


def is_seccomp_notify_fd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == SECCOMP_FD_LINK
    except OSError:
        return False


def receive_message(
    conn: socket.socket, deadline: float, max_bytes: int = MAX_MESSAGE
) -> tuple[bytes, list[int]]:
    """Read one message and every fd sent with it.

    Stops at EOF or as soon as the bytes form a complete JSON value (neither
    runtime waits for a reply, but neither should we wait for their close). On
    error the fds received so far are closed before raising.
    """
    buf = bytearray()
    fds: list[int] = []
    truncated = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ListenerReject("timeout", f"{len(buf)} bytes before the deadline")
            conn.settimeout(remaining)
            try:
                data, anc, flags, _ = conn.recvmsg(
                    65536, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
                )
            except TimeoutError:
                raise ListenerReject("timeout", f"{len(buf)} bytes before the deadline") from None
            for level, typ, payload in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                    fds.extend(a)
            truncated |= bool(flags & socket.MSG_CTRUNC)
            if not data:
                break
            buf += data
            if len(buf) > max_bytes:
                raise ListenerReject("too large", f"over {max_bytes} bytes")
            if buf.rstrip().endswith(b"}") and _complete_json(buf):
                break
        if truncated:
            raise ListenerReject("several fds", f"more than {MAX_FDS} fds")
        return bytes(buf), fds
    except BaseException:
        close_fds(fds)
        raise


def _complete_json(buf: bytearray) -> bool:
    try:
        json.loads(buf)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def peer_pid(conn: socket.socket) -> int:
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)[0]
    except OSError:
        return 0


# Called with a validated message and the notify fd, which it then owns; raises
# ListenerReject (the listener closes the fd) to refuse.
OnMessage = Callable[[ProcessState, int], None]


class Listener(UnixServer):
    """seccomp.sock. The daemon calls bind() before its imports and start() after:
    runc and crun hand over and go on without waiting for an answer, so one that connects
    while the daemon is still starting succeeds and its container's calls wait for it."""

    name = "listener"
    backlog = 128
    max_clients = MAX_CONNECTIONS

    def __init__(
        self,
        path: str,
        on_message: OnMessage,
        counters: Counters,
        *,
        timeout: float = TIMEOUT,
        max_bytes: int = MAX_MESSAGE,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.max_clients = max_connections
        super().__init__(path)
        self._on_message = on_message
        self._counters = counters
        self._timeout = timeout
        self._max_bytes = max_bytes

    def refuse(self, conn: socket.socket) -> None:
        self._reject(conn, ListenerReject("too many connections"), [])

    def accept_failed(self, e: OSError) -> None:
        self._counters.inc("listener_errors", "accept failed")
        log.error("accept failed", extra={"fields": {"error": str(e)}})

    def handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            deadline = time.monotonic() + self._timeout
            data, fds = receive_message(conn, deadline, self._max_bytes)
            if not data:
                raise ListenerReject("empty message")
            state = parse_state(data)
            fd = self._check_fds(fds)
            self._on_message(state, fd)
            fds = []  # owned by on_message now
        except ListenerReject as e:
            self._reject(conn, e, fds)
        except OSError as e:
            self._reject(conn, ListenerReject("io error", str(e)), fds)
        except Exception as e:
            log.exception("listener: internal error")
            self._reject(conn, ListenerReject("internal error", repr(e)), fds)

    @staticmethod
    def _check_fds(fds: list[int]) -> int:
        if not fds:
            raise ListenerReject("no fd")
        if len(fds) > 1:
            raise ListenerReject("several fds", f"{len(fds)} fds")
        if not is_seccomp_notify_fd(fds[0]):
            try:
                what = os.readlink(f"/proc/self/fd/{fds[0]}")
            except OSError:
                what = "?"
            raise ListenerReject("not a seccomp fd", what)
        return fds[0]

    def _reject(self, conn: socket.socket, e: ListenerReject, fds: list[int]) -> None:
        close_fds(fds)
        self._counters.inc("listener_errors", e.reason)
        log.warning(
            "listener: refused connection",
            extra={"fields": {"reason": e.reason, "detail": e.detail, "peer_pid": peer_pid(conn),
                              "fds": len(fds)}},
        )
