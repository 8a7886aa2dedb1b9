"""The emulated files' FUSE tree under <state-dir>/fs and the threads that render
what it asks for.

Readers are served by C threads (core.FuseServer, csrc/fusefs.c) from bytes held
per (container, file); Python runs only here, off the readers' path: it renders a
file for a container when the C side finds its bytes missing or stale, and pushes
them back. docs/emulation-fuse.md has the bounds and the failure answers.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from interceptd import core

log = logging.getLogger("interceptd.emulation.fuse")

# (container key, file path as declared) -> the file's bytes; raises on failure.
Render = Callable[[int, str], bytes]
# (container key, file path, data, writer's uid, writer's pid) -> bytes taken or -errno.
Write = Callable[[int, str, bytes, int, int], int]
MAX_BYTES = 1 << 20  # one rendered file (csrc/fusefs.c MAX_BLOB)
# A test hook (as INTERCEPTD_DEBUG_STALL_DIR): while <dir>/<path with "/" as "_"> exists,
# renders of that file wait (after creating <that>.stalled), so the opens waiting for
# them stay parked: a reader blocked in the server when the daemon is killed.
STALL_ENV = "INTERCEPTD_DEBUG_RENDER_STALL_DIR"


@dataclass(frozen=True, slots=True)
class EmulatedFile:
    path: str  # relative to the tree, e.g. "proc/meminfo"
    fresh: float = 0.25  # seconds: served as rendered
    max_stale: float = 1.0  # seconds: served while a re-render is requested
    size: int = 4096  # st_size before a render / for no container (docs/emulation-fuse.md)
    writable: bool = False  # a /proc/sys value: writes go to the service's `write`


def fs_dir(state_dir: str) -> str:
    """The one mountpoint of the tree: <state-dir>/fs."""
    return os.path.join(state_dir, "fs")


class FuseService:
    """A mounted FuseServer plus `renderers` threads answering its render requests."""

    def __init__(self, mountpoint: str, files: Sequence[EmulatedFile], render: Render, *,
                 workers: int = 2, wait_timeout: float = 1.0, renderers: int = 1,
                 write: Write | None = None) -> None:
        self.mountpoint = mountpoint
        self.render = render
        self.write = write
        self.server = core.FuseServer(workers=workers, wait_timeout=wait_timeout)
        self.ids: dict[str, int] = {}
        for f in files:
            self.ids[f.path] = self.server.add_file(f.path, f.fresh, f.max_stale, f.size)
            if f.writable:
                self.server.writable(self.ids[f.path])
        self.paths = list(self.ids)
        self._nrenderers = renderers
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.render_errors = 0
        self.render_seconds = 0.0
        self._stopped = False
        self._adopted = False
        self._stall_dir = os.environ.get(STALL_ENV) or None

    def start(self) -> None:
        os.makedirs(self.mountpoint, mode=0o755, exist_ok=True)
        self.server.start(self.mountpoint)
        self._start_renderers()

    def adopt(self, fd: int, dev: int) -> None:
        """Take over a predecessor's connection (`fd`, the mount's st_dev `dev`)
        instead of `start`; nothing is read from it before `serve`. OSError when
        it cannot be (ESTALE: the mount is another one): `start` afresh then."""
        self.server.adopt(fd, self.mountpoint, dev)
        self._adopted = True
        self._start_renderers()

    def serve(self) -> bool:
        """After `adopt` (and the containers' registration): the requests the
        predecessor took and did not answer are queued again by the kernel, then
        served with the rest. False when the kernel could not resend them."""
        if not self._adopted:
            return True
        resent = True
        try:
            self.server.resend()
        except OSError as e:
            resent = False
            log.error("requests a predecessor took were not resent: their readers wait "
                      "until the mount goes", extra={"fields": {"error": str(e)}})
        self.server.serve()
        return resent

    def _start_renderers(self) -> None:
        for i in range(self._nrenderers):
            t = threading.Thread(target=self._loop, name=f"fuse-render-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def register(self, key: int, pid: int) -> None:
        """Readers in the pid namespace of `pid` (and those nested in it) are
        container `key`."""
        self.server.register(key, pid)

    def register_nsfd(self, key: int, nsfd: int) -> None:
        """The same from a pid-namespace fd (e.g. opened from /proc/<pid>/ns/pid
        while a pidfd showed the process alive); the caller keeps its fd."""
        self.server.register_nsfd(key, nsfd)

    def unregister(self, key: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.server.unregister(key)

    def stats(self) -> dict[str, Any]:
        out = self.server.stats()
        with self._lock:
            out["render_errors"] = self.render_errors
            out["render_seconds"] = self.render_seconds
        return out

    def stop(self) -> None:
        """Unmount (the mount is gone afterwards) and end the threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.server.stop()  # a blocked requests() returns ESHUTDOWN
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()

    def _loop(self) -> None:
        while True:
            try:
                reqs = self.server.requests(None)
            except OSError as e:
                if e.errno != errno.ESHUTDOWN:
                    log.exception("fuse render requests failed")
                return
            # In order (a render asked after a write shows it); one render per
            # (container, file) of a batch.
            for key, fid, wid in dict.fromkeys(reqs):
                if wid:
                    self._write_one(wid)
                else:
                    self._render_one(key, fid)

    def refresh(self, key: int, path: str) -> None:
        """Render `path` for container `key` now and push it (after a write changed
        what it shows)."""
        self._render_one(key, self.ids[path])

    def _write_one(self, wid: int) -> None:
        w = self.server.write_get(wid)
        if w is None:
            return  # interrupted or timed out meanwhile
        key, fid, uid, pid, data = w
        path = self.paths[fid]
        try:
            if self.write is None:
                raise OSError(errno.EROFS, "no writer")
            result = int(self.write(key, path, data, uid, pid))
        except Exception as e:  # a bug is the writer's EIO, never a hang
            log.warning("write of %s failed", path, exc_info=True,
                        extra={"fields": {"container": key, "file": path, "error": repr(e)}})
            result = -errno.EIO
        self.server.write_done(wid, result)

    def _stall(self, path: str) -> None:
        assert self._stall_dir is not None
        flag = os.path.join(self._stall_dir, path.replace("/", "_"))
        if os.path.exists(flag):
            with open(f"{flag}.stalled", "w"):
                pass
            while os.path.exists(flag) and not self._stopped:
                time.sleep(0.005)

    def _render_one(self, key: int, fid: int) -> None:
        path = self.paths[fid]
        if self._stall_dir is not None:
            self._stall(path)
        t0 = time.perf_counter()
        try:
            data = self.render(key, path)
            if not isinstance(data, bytes):
                raise TypeError(f"renderer returned {type(data).__name__}, not bytes")
            if len(data) > MAX_BYTES:
                raise ValueError(f"rendered {len(data)} bytes, more than {MAX_BYTES}")
        except Exception as e:  # any renderer bug is the reader's EIO, never a hang
            with self._lock:
                self.render_errors += 1
            log.warning("render of %s failed", path, exc_info=True,
                        extra={"fields": {"container": key, "file": path,
                                          "error": repr(e)}})
            self._push(self.server.fail, key, fid, errno.EIO)
            return
        with self._lock:
            self.render_seconds += time.perf_counter() - t0
        self._push(self.server.set, key, fid, data)

    @staticmethod
    def _push(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except OSError as e:
            # ENOENT: the container was unregistered meanwhile; ESHUTDOWN: stopping.
            if e.errno not in (errno.ENOENT, errno.ESHUTDOWN):
                log.warning("fuse push failed: %s", e)
