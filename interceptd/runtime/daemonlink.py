"""Is the interceptd daemon there to receive this container's notify fd?"""

from __future__ import annotations

import _socket  # the C module: socket.py's enum/selectors imports cost ms per start
import json
import os


class DaemonUnreachable(Exception):
    pass


def check(state_dir: str, timeout: float = 2.0) -> dict:
    """Ask control.sock for status; raise DaemonUnreachable with the reason otherwise."""
    seccomp = os.path.join(state_dir, "seccomp.sock")
    control = os.path.join(state_dir, "control.sock")
    if not os.path.exists(seccomp):
        raise DaemonUnreachable(f"{seccomp} does not exist (is interceptd running?)")
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(control)
        s.sendall(b'{"cmd": "status"}\n')
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 1 << 20:
                raise DaemonUnreachable(f"{control}: oversized status reply")
    except OSError as e:
        raise DaemonUnreachable(f"cannot reach {control}: {e}") from None
    finally:
        s.close()
    try:
        status = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        raise DaemonUnreachable(f"{control}: status reply is not JSON") from None
    if not isinstance(status, dict) or status.get("error") or status.get("ok") is False:
        raise DaemonUnreachable(f"{control}: daemon reports {status!r}")
    return status
