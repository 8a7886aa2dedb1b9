"""`interceptctl restart` and SIGHUP: the daemon starts its successor and hands it every
fd of its store, without systemd (docs/operations.md, "Restarts").

The successor is the same command line (an upgraded package's code, once installed),
started with one end of a SOCK_SEQPACKET pair named in `INTERCEPTD_HANDOVER`:

1. the successor imports and builds everything that needs no fd, then sends `ready`;
2. the predecessor stops accepting (listener, control, runtime; the sockets stay open,
   new connections wait in their backlog), sends the fd store (the FUSE connection
   included) (`fds` messages: names as
   JSON, the fds by SCM_RIGHTS, at most FDS_PER_MESSAGE each), then `done`, and exits
   at once without tearing anything down (no STOPPING=1; channels are not closed, so no
   queued notification is failed);
3. the successor waits for the predecessor's exit (its pidfd), reads the journal and
   attaches the fds — the only pause containers see — and answers what the journal left.

Under systemd the predecessor first sends `MAINPID=<successor>`, so the service keeps
running; the successor is in the service's cgroup already.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interceptd.daemon import Daemon

log = logging.getLogger("interceptd.reexec")

ENV = "INTERCEPTD_HANDOVER"
FDS_PER_MESSAGE = 250  # under the kernel's SCM_MAX_FD (253)
MAX_MSG = 64 * 1024
READY_TIMEOUT = 30.0


class HandoverError(Exception):
    pass


def spawn_successor() -> tuple[subprocess.Popen[bytes], socket.socket]:
    """The successor process and our end of its hand-over channel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ, **{ENV: str(theirs.fileno())})
    for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(k, None)
    try:
        proc = subprocess.Popen(list(sys.orig_argv), executable=sys.executable, env=env,
                                pass_fds=[theirs.fileno()], start_new_session=True,
                                stdin=subprocess.DEVNULL)
    finally:
        theirs.close()
    return proc, ours


def successor_channel() -> socket.socket | None:
    """In a successor: the channel to the predecessor (the variable is consumed)."""
    value = os.environ.pop(ENV, "")
    if not value.isdigit():
        return None
    try:
        return socket.socket(fileno=int(value))
    except OSError:
        return None


def wait_ready(chan: socket.socket, proc: subprocess.Popen[bytes],
               timeout: float = READY_TIMEOUT) -> None:
    chan.settimeout(timeout)
    try:
        msg = chan.recv(MAX_MSG)
    except TimeoutError:
        raise HandoverError(f"successor {proc.pid} not ready within {timeout:g} s") from None
    if msg != b"ready":
        raise HandoverError(f"successor {proc.pid} failed to start "
                            f"(exit {proc.poll()}; see its log)")


def send_fds(chan: socket.socket, pairs: list[tuple[str, int]]) -> None:
    chan.settimeout(10.0)
    for i in range(0, len(pairs), FDS_PER_MESSAGE):
        chunk = pairs[i:i + FDS_PER_MESSAGE]
        names = json.dumps({"fds": [n for n, _ in chunk]}).encode()
        chan.sendmsg([names], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [fd for _, fd in chunk]))])
    chan.sendmsg([json.dumps({"done": os.getpid()}).encode()])


def ask_fds(chan: socket.socket, timeout: float = READY_TIMEOUT
            ) -> tuple[int, list[tuple[str, int]]]:
    """In a successor: say ready, then take the predecessor's fds; (its pid, fds)."""
    chan.sendall(b"ready")
    chan.settimeout(timeout)
    out: list[tuple[str, int]] = []
    try:
        while True:
            msg, anc, flags, _ = chan.recvmsg(MAX_MSG, socket.CMSG_SPACE(FDS_PER_MESSAGE * 4),
                                              socket.MSG_CMSG_CLOEXEC)
            fds: list[int] = []
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(data[: len(data) - len(data) % a.itemsize])
                    fds.extend(a)
            if not msg:
                raise HandoverError("predecessor went away mid-way")
            doc = json.loads(msg)
            if "done" in doc:
                return int(doc["done"]), out
            names = doc.get("fds", [])
            if len(names) != len(fds) or flags & socket.MSG_CTRUNC:
                for fd in fds:
                    os.close(fd)
                raise HandoverError("fd message truncated")
            out.extend(zip(names, fds, strict=True))
    except BaseException:
        for _, fd in out:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise


def wait_exit(pid: int, timeout: float = 10.0) -> bool:
    """Whether `pid` ended within `timeout` seconds."""
    try:
        pfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        p = select.poll()
        p.register(pfd, select.POLLIN)
        return bool(p.poll(int(timeout * 1000)))
    finally:
        os.close(pfd)


def start_successor(d: Daemon) -> dict[str, Any]:
    """The daemon's `restart`: spawn, wait for `ready`; `then` hands over and exits."""
    proc, chan = spawn_successor()
    try:
        wait_ready(chan, proc)
    except HandoverError:
        chan.close()
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        raise
    log.info("successor ready; handing over", extra={"fields": {"successor": proc.pid}})

    def then() -> None:
        for name in ("listener", "control", "runtime"):
            if (part := d._parts.get(name)) is not None:
                part.quiesce()
        if (disp := d._parts.get("dispatcher")) is not None:
            disp.freeze()  # no call is left half done for the successor (quiesce.py)
        d.notifier.main_pid(proc.pid)
        send_fds(chan, [*d._handover().store.items(), ("lock", d._lock_fd)])
        logging.shutdown()
        os._exit(0)  # no teardown: the successor serves every fd from here on

    return {"pid": os.getpid(), "successor": proc.pid, "then": then}
