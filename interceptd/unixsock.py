"""The daemon's root-only unix stream endpoints (seccomp.sock, control.sock, runtime.sock)."""

from __future__ import annotations

import contextlib
import os
import socket


def listen_private(path: str, backlog: int, accept_timeout: float | None = None
                   ) -> socket.socket:
    """A listening AF_UNIX socket at `path`, 0600 from the moment it exists: the umask
    is set around bind, so no other user can connect in the instant before a chmod."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(backlog)
        if accept_timeout is not None:
            sock.settimeout(accept_timeout)  # lets the accept loop see its stop flag
    except BaseException:
        sock.close()
        raise
    return sock


def close_and_unlink(sock: socket.socket | None, path: str) -> None:
    if sock is not None:
        sock.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
