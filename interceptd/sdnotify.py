"""systemd's notify protocol (sd_notify(3)), the part a Type=notify service needs.

The service manager names a datagram socket in `$NOTIFY_SOCKET`: a file system path, or
an abstract socket written with a leading '@' (the '@' stands for the NUL byte). Each
message is one datagram of newline-separated `KEY=VALUE` assignments (READY=1,
STATUS=..., STOPPING=1, RELOADING=1, WATCHDOG=1). Without `$NOTIFY_SOCKET` (not started
by systemd) every call is a no-op, so the daemon runs the same everywhere.

The watchdog: `$WATCHDOG_USEC` is the timeout the unit's WatchdogSec= set;
`$WATCHDOG_PID`, when present, names the process meant to ping (a child that inherited
the environment must not). systemd recommends pinging at half the timeout.
"""

from __future__ import annotations

import array
import logging
import os
import socket
from collections.abc import Mapping, Sequence

log = logging.getLogger("interceptd.sdnotify")

# A datagram the manager would truncate is a bug here, not something to split.
MAX_MESSAGE = 4096


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: addresses (systemd 254+) are not used by this service


def _clean(value: str) -> str:
    # One assignment per line: a newline in a STATUS would start a forged key.
    return value.replace("\n", " ").replace("\r", " ")


class Notifier:
    """Sends to `$NOTIFY_SOCKET`; `enabled` is False when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._addr = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self._watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_usec = int(usec)
        if self._addr is None and env.get("NOTIFY_SOCKET"):
            log.warning("NOTIFY_SOCKET not understood; not notifying",
                        extra={"fields": {"notify_socket": env.get("NOTIFY_SOCKET")}})

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout), None without a watchdog."""
        if not self.enabled or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2e6

    @property
    def watchdog_timeout(self) -> float | None:
        return self._watchdog_usec / 1e6 if self._watchdog_usec else None

    def send(self, *, fds: Sequence[int] = (), **fields: str | int) -> bool:
        """One datagram with `KEY=VALUE` lines (and `fds` by SCM_RIGHTS, for
        FDSTORE=1); False if it could not be sent."""
        if self._addr is None:
            return False
        msg = "\n".join(f"{k}={_clean(str(v))}" for k, v in fields.items()).encode()
        if len(msg) > MAX_MESSAGE:
            raise ValueError(f"notify message of {len(msg)} bytes")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            self._sock.sendmsg([msg], anc, 0, self._addr)
        except OSError as e:
            # The manager going away must never take the daemon down with it.
            log.debug("sd_notify failed", extra={"fields": {"error": str(e)}})
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def reloading(self) -> bool:
        return self.send(RELOADING=1)

    def stopping(self, status: str = "") -> bool:
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def main_pid(self, pid: int) -> bool:
        """The service's main process is `pid` from now on (a hand-over successor)."""
        return self.send(MAINPID=pid)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
