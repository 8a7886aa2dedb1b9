"""Namespace executors started by a small forked process instead of by the daemon.

A fork write-protects every page of the forking process: until each page is written once
more, every daemon thread that touches one takes a copy-on-write fault. Forking an
executor from the daemon for each new (user, mount) namespace therefore slowed every
container's calls, not just the forking one's (a neighbour looping `unshare -Um` +
`mount` raised a quiet container's p99 several-fold). The zygote is forked from the
daemon once; it starts executors (the core's `ZYGOTE_PARTS.start_helper`, the same code
the daemon would run) and hands back their socket and a pidfd, so later forks touch only its own
pages.

The zygote keeps no fd of the daemon's but its socket, exits when that socket closes (the
daemon is gone or closed it), and is the executors' parent: their PR_SET_PDEATHSIG fires
when it dies. It reaps them; the daemon stops one by closing its socket and signalling
its pidfd (never a pid that may have been reused).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import struct
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from interceptd.seams import ZygoteParts

log = logging.getLogger("interceptd.policy")

_REQ = struct.Struct("=iii")  # pid, namespaces, timeout ms (the caller's pidfd rides along)
_REP = struct.Struct("=ii9Q")  # status, helper pid, user/mnt/root ids (struct icd_executor)
_NO_IDS = (0,) * 7


def _serve(parts: ZygoteParts, sock: socket.socket) -> None:
    """The zygote's loop (in the forked child; never returns)."""
    try:
        keep = sock.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 16)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        while True:
            msg, fds, _, _ = socket.recv_fds(sock, _REQ.size, 1)
            if not msg:
                os._exit(0)
            pid, namespaces, timeout_ms = _REQ.unpack(msg)
            rc, hsock, ids = (parts.start_helper(fds[0], pid, namespaces, timeout_ms) if fds
                              else (-errno.EBADF, -1, ()))
            for fd in fds:
                os.close(fd)
            hp = -1
            if rc == 0:
                try:
                    hp = os.pidfd_open(ids[0])  # our unreaped child: the pid is still it
                except OSError as e:
                    parts.stop_helper(hsock, ids[0])
                    rc = -(e.errno or errno.ESRCH)
            rep = _REP.pack(rc, *(ids if rc == 0 else (-1, *_NO_IDS)), 0, 0)
            if rc == 0:
                socket.send_fds(sock, [rep], [hsock, hp])
                os.close(hsock)
                os.close(hp)
            else:
                sock.send(rep)
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
    except BaseException:
        pass
    os._exit(1)


class ZygoteGone(OSError):
    """The zygote cannot be reached (it died): start a new one or fork directly."""


class Zygote:
    def __init__(self, parts: ZygoteParts) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            a.close()
            _serve(parts, b)
        b.close()
        self.sock, self.pid, self.parts = a, pid, parts
        self.lock = threading.Lock()

    def start(self, pidfd: int, pid: int, namespaces: int,
              timeout_ms: int) -> tuple[int, int, tuple[int, ...]]:
        """(helper socket, helper pidfd, (pid, user/mnt/root ids)) of a new executor."""
        with self.lock:
            try:
                socket.send_fds(self.sock, [_REQ.pack(pid, namespaces, timeout_ms)], [pidfd])
                self.sock.settimeout(timeout_ms / 1000 + 5)
                try:
                    msg, fds, _, _ = socket.recv_fds(self.sock, _REP.size, 2)
                finally:
                    self.sock.settimeout(None)
            except OSError as e:  # a timeout leaves a reply in flight: never reuse it
                raise ZygoteGone(e.errno or errno.EPIPE, f"zygote: {e}") from None
        if len(msg) != _REP.size:
            for fd in fds:
                os.close(fd)
            raise ZygoteGone(errno.EPIPE, "zygote gone")
        rc, hpid, *ids = _REP.unpack(msg)
        if rc != 0 or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise OSError(-rc or errno.EIO, f"executor start: {os.strerror(-rc or errno.EIO)}")
        return fds[0], fds[1], (hpid, *ids)

    def close(self) -> None:
        self.sock.close()  # it exits on EOF
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
