"""`<state-dir>/control.sock`: JSON-lines requests from interceptctl.

Requests: `{"cmd": "status"}`, `{"cmd": "containers"}`, `{"cmd": "reload"}`
(interceptd.reload), `{"cmd": "stats"}` (the eBPF counters per container),
`{"cmd": "network"}` (each container's interfaces),
`{"cmd": "trace", "container": ID-PREFIX, "syscall": NAME, "verdict": V, "source": S,
"pid": N, "comm": C, "count": N}` (all filters optional). Every answer starts
with one object carrying `"ok"`; a trace then streams one event per line and ends
with `{"end": true, "dropped": n}`
(when `count` is reached or the daemon stops) or when the client hangs up.

Each client has its own thread with a send timeout, so a client that stops
reading loses its trace (events are dropped, never queued without bound) and
never blocks the daemon.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from interceptd.events import Counters, Event, EventBus
from interceptd.unixserver import UnixServer

log = logging.getLogger("interceptd.control")

MAX_LINE = 64 * 1024
IDLE_TIMEOUT = 60.0
SEND_TIMEOUT = 5.0
MAX_CLIENTS = 32
TRACE_QUEUE = 8192


class ControlServer(UnixServer):
    name = "control"
    backlog = 32
    max_clients = MAX_CLIENTS
    join_wait = 2.0
    # A hand-over is asked for on a control connection, and an idle client can keep its
    # connection for IDLE_TIMEOUT: the hand-over waits for neither.
    drain_on_quiesce = False
    wake_on_stop = True  # a client blocked reading its next request ends at stop

    def __init__(
        self,
        path: str,
        *,
        status: Callable[[], dict[str, Any]],
        containers: Callable[[], list[dict[str, Any]]],
        bus: EventBus | None,
        counters: Counters,
        stats: Callable[[], dict[str, Any]] | None = None,
        network: Callable[[], dict[str, Any]] | None = None,
        reload: Callable[[], dict[str, Any]] | None = None,
        restart: Callable[[], dict[str, Any]] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        super().__init__(path)
        self._status = status
        self._containers = containers
        self._bus = bus
        self._counters = counters
        self._stats = stats
        self._network = network
        self._reload = reload
        self._restart = restart
        self._idle_timeout = idle_timeout
        self._send_timeout = send_timeout

    def refuse(self, conn: socket.socket) -> None:
        self._counters.inc("control_errors", "too many clients")

    def handle(self, conn: socket.socket) -> None:
        """Requests until EOF, an idle timeout, a trace's end or the server's stop (a
        trace gets its end line)."""
        try:
            reader = _LineReader(conn, self._idle_timeout)
            while not self.stopping:
                line = reader.readline()
                if line is None:
                    return
                if not line.strip():
                    continue
                if not self.serve_line(line, conn):
                    return
        except (OSError, _LineTooLong) as e:
            self._counters.inc("control_errors", type(e).__name__)

    def serve_line(self, line: bytes, conn: socket.socket) -> bool:
        """Answer one request; False when the connection should end."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            self._counters.inc("control_errors", "bad request")
            self._send(conn, {"ok": False, "error": f"bad request: {e}"})
            return True
        cmd = req.get("cmd")
        if cmd == "status":
            self._send(conn, {"ok": True, **self._status()})
        elif cmd == "containers":
            self._send(conn, {"ok": True, "containers": self._containers()})
        elif cmd == "stats" and self._stats is not None:
            self._send(conn, {"ok": True, **self._stats()})
        elif cmd == "network" and self._network is not None:
            self._send(conn, {"ok": True, "containers": self._network()})
        elif cmd == "trace":
            self._trace(conn, req)
            return False
        elif cmd == "reload" and self._reload is not None:
            try:
                result = self._reload()
            except ValueError as e:  # ConfigError: nothing was changed
                self._send(conn, {"ok": False, "error": f"reload refused: {e}"})
            except Exception as e:
                log.exception("reload failed")
                self._send(conn, {"ok": False, "error": f"reload failed: {e}"})
            else:
                self._send(conn, {"ok": True, **result})
        elif cmd == "restart" and self._restart is not None:
            self._restart_cmd(conn)
        else:
            self._counters.inc("control_errors", "unknown command")
            self._send(conn, {"ok": False, "error": f"unknown command {cmd!r}"})
        return True

    def _restart_cmd(self, conn: socket.socket) -> None:
        """The successor is started and ready before the answer; the hand-over itself
        (`then`) runs after it, and this process exits there."""
        assert self._restart is not None
        try:
            result = self._restart()
        except Exception as e:
            log.exception("restart failed")
            self._send(conn, {"ok": False, "error": f"restart failed: {e}"})
            return
        then = result.pop("then", None)
        self._send(conn, {"ok": True, **result})
        if then is not None:
            then()

    def _send(self, conn: socket.socket, obj: dict[str, Any]) -> None:
        conn.settimeout(self._send_timeout)
        conn.sendall(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")

    def _trace(self, conn: socket.socket, req: dict[str, Any]) -> None:
        try:
            match = trace_filter(req)
            count = int(req.get("count") or 0)
            if count < 0:
                raise ValueError("count must be >= 0")
        except (TypeError, ValueError) as e:
            self._send(conn, {"ok": False, "error": f"bad trace request: {e}"})
            return
        if self._bus is None:
            self._send(conn, {"ok": False, "error": "tracing is not available"})
            return
        sent = 0
        checked = time.monotonic()
        with self._bus.subscribe(TRACE_QUEUE) as sub:
            self._send(conn, {"ok": True, "trace": True})
            while not self.stopping and (count == 0 or sent < count):
                ev = sub.get(timeout=0.5)
                # Also while events flow that the filter drops: else a client gone
                # away kept its thread, fd and client slot for as long as they flow.
                if ev is None or time.monotonic() - checked >= 0.5:
                    checked = time.monotonic()
                    if self.stopping:
                        break
                    if _hung_up(conn):
                        return
                if ev is None:
                    continue
                if not match(ev):
                    continue
                self._send(conn, ev.to_dict())
                sent += 1
            if sub.dropped:
                self._counters.inc("trace_dropped_events", "", sub.dropped)
            self._send(conn, {"end": True, "dropped": sub.dropped})


def trace_filter(req: dict[str, Any]) -> Callable[[Event], bool]:
    """The events a trace request selects: `container` is an id prefix, `pid` a
    number (the caller's thread id as the host sees it), the rest exact."""
    want: dict[str, str] = {}
    for key in ("syscall", "verdict", "source", "comm"):
        v = req.get(key)
        if v is None or v == "":
            continue
        if not isinstance(v, str):
            raise ValueError(f"{key} must be a string")
        want[key] = v
    prefix = req.get("container") or ""
    if not isinstance(prefix, str):
        raise ValueError("container must be a string")
    pid = req.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
        raise ValueError("pid must be a non-negative integer")

    def match(ev: Event) -> bool:
        if prefix and not ev.container.startswith(prefix):
            return False
        if pid is not None and ev.pid != pid:
            return False
        return all(getattr(ev, k) == v for k, v in want.items())

    return match


def _hung_up(conn: socket.socket) -> bool:
    # poll, not recv: a socket with a timeout would wait that long in recv.
    p = select.poll()
    p.register(conn, select.POLLIN | select.POLLRDHUP)
    events = p.poll(0)
    if not events:
        return False
    if events[0][1] & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
        return True
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _LineTooLong(Exception):
    pass


class _LineReader:
    def __init__(self, conn: socket.socket, timeout: float | None) -> None:
        self._conn = conn
        self._timeout = timeout
        self._buf = bytearray()

    def readline(self) -> bytes | None:
        """The next line, or None at EOF or after `timeout` idle seconds."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                return line
            if len(self._buf) > MAX_LINE:
                raise _LineTooLong
            self._conn.settimeout(self._timeout)
            try:
                data = self._conn.recv(65536)
            except TimeoutError:
                return None
            if not data:
                return bytes(self._buf) if self._buf.strip() else None
            self._buf += data


def request(path: str, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request, one answer (client side; used by interceptctl and the daemon's
    own "is another daemon alive" check)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        reader = _LineReader(s, timeout)
        line = reader.readline()
        if line is None:
            raise ConnectionError("no answer from the daemon")
        out = json.loads(line)
        if not isinstance(out, dict):
            raise ConnectionError("malformed answer from the daemon")
        return out


def stream(path: str, req: dict[str, Any], timeout: float = 5.0) -> Any:
    """Yield every line's object of a streaming request (trace)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        reader = _LineReader(s, None)
        while True:
            line = reader.readline()
            if line is None:
                return
            yield json.loads(line)
