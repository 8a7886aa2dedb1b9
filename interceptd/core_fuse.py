"""Python face of the C core's FUSE server (csrc/fusefs.c): the emulated /proc and
/sys files, served by C threads. Re-exported by core.py.
"""

from __future__ import annotations

import errno as errno_mod
import os
import threading
from typing import Any

from interceptd._corelib import check, ffi, fields, lib, path_bytes

FUSE_HIST: int = lib.ICD_FUSE_HIST
_FUSE_FILE_FIELDS = tuple(f for f in fields("struct icd_fuse_fstats") if f != "hist")
_FUSE_FIELDS = fields("struct icd_fuse_stats")


class FuseServer:
    """The emulated files' FUSE tree, served by C threads (csrc/fusefs.c).

    Files are declared with `add_file` before `start(mountpoint)`; each gets an id
    (its index). Containers are registered by pid namespace; the C side asks for
    renders (`requests`) and Python answers with `set` (or `fail`). No Python runs
    on a reader's path. See docs/emulation-fuse.md for the staleness bounds.
    """

    def __init__(self, workers: int = 2, wait_timeout: float = 1.0) -> None:
        ptr = lib.icd_fuse_new(workers, max(1, int(wait_timeout * 1000)))
        if ptr == ffi.NULL:
            raise OSError(ffi.errno, "icd_fuse_new")
        self._ptr = ffi.gc(ptr, lib.icd_fuse_free)
        self.paths: list[str] = []
        self._reqbuf = ffi.new("struct icd_fuse_req[]", 256)
        self._reqlock = threading.Lock()

    def add_file(self, path: str, fresh: float = 0.25, max_stale: float = 1.0,
                 size: int = 4096) -> int:
        """Declare the read-only file `path` (relative, e.g. "proc/meminfo"): bytes
        younger than `fresh` seconds are served as they are, up to `max_stale` while a
        re-render is requested, older ones wait for it. Readers of a container see
        its bytes' length as st_size; others (and before the first render) see
        `size` (not 0: see docs/emulation-fuse.md). Returns the file id."""
        fid = check(lib.icd_fuse_add_file(self._ptr, path_bytes(path), int(fresh * 1000),
                                           int(max_stale * 1000), size), f"add_file({path})")
        self.paths.append(path)
        return fid

    def start(self, mountpoint: str) -> None:
        """Mount the tree at `mountpoint` (a stale FUSE mount there is detached
        first) and start serving. Once per server (make a new one after `stop`)."""
        check(lib.icd_fuse_start(self._ptr, path_bytes(mountpoint)), "fuse start")

    def adopt(self, fd: int, mountpoint: str, dev: int) -> None:
        """Instead of `start`: take over a predecessor's initialised connection `fd`
        (duplicated) mounted at `mountpoint` with st_dev `dev`; no mount, no INIT, no
        thread yet: register the containers, then `resend` and `serve`.
        OSError(ESTALE) when the mount there is not that connection (the server can
        still `start`)."""
        check(lib.icd_fuse_adopt(self._ptr, fd, path_bytes(mountpoint), dev), "fuse adopt")

    def resend(self) -> None:
        """Have the kernel queue again every request taken from the connection and
        not answered (by a predecessor that died or exited): FUSE_NOTIFY_RESEND."""
        check(lib.icd_fuse_resend(self._ptr), "fuse resend")

    def serve(self) -> None:
        """After `adopt`: start the threads."""
        check(lib.icd_fuse_serve(self._ptr), "fuse serve")

    @property
    def fd(self) -> int:
        """The connection's /dev/fuse fd (the server's own; dup it to keep it)."""
        return int(lib.icd_fuse_fd(self._ptr))

    def register(self, key: int, pid: int) -> None:
        """Readers in the pid namespace of `pid` (or in namespaces nested in it)
        read container `key`'s renders; the namespace is held while registered."""
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.register_nsfd(key, fd)
        finally:
            os.close(fd)

    def register_nsfd(self, key: int, nsfd: int) -> None:
        """`register` from a pid-namespace fd (duplicated; EINVAL if it is not one,
        or is the daemon's own; EEXIST if the key or namespace is registered)."""
        check(lib.icd_fuse_register(self._ptr, key, nsfd), "fuse register")

    def unregister(self, key: int) -> None:
        """Forget container `key` (its waiting readers get EIO; open files keep
        the bytes they opened)."""
        check(lib.icd_fuse_unregister(self._ptr, key), "fuse unregister")

    def set(self, key: int, file_id: int, data: bytes) -> None:
        """The new bytes of file `file_id` for container `key`; answers its waiting
        readers. OSError(ENOENT) if `key` is not registered."""
        check(lib.icd_fuse_set(self._ptr, key, file_id, data, len(data)), "fuse set")

    def fail(self, key: int, file_id: int, err: int = errno_mod.EIO) -> None:
        """The render failed: readers get `err` until the next render (requested
        again after the file's `fresh` bound)."""
        check(lib.icd_fuse_fail(self._ptr, key, file_id, err), "fuse fail")

    def requests(self, timeout: float | None = None) -> list[tuple[int, int, int]]:
        """Pending requests as (key, file_id, write_id): a render when write_id is 0,
        else a parked write (`write_get`, `write_done`); waiting up to `timeout`
        seconds (None: until one comes, `wake` or `stop`); [] on timeout.
        OSError(ESHUTDOWN) once stopped."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        with self._reqlock:
            buf = self._reqbuf
            n = check(lib.icd_fuse_requests(self._ptr, buf, len(buf), ms), "fuse requests")
            return [(int(buf[i].key), int(buf[i].file), int(buf[i].write)) for i in range(n)]

    def writable(self, file_id: int) -> None:
        """Before `start`: file `file_id` takes writes, each handed over as a request."""
        check(lib.icd_fuse_writable(self._ptr, file_id), "fuse writable")

    def write_get(self, write_id: int) -> tuple[int, int, int, int, bytes] | None:
        """The parked write: (key, file_id, writer's uid, writer's pid, data); None if
        it was answered meanwhile (interrupted, timed out, container gone)."""
        w = ffi.new("struct icd_fuse_write *")
        n = lib.icd_fuse_write_get(self._ptr, write_id, w)
        if n < 0:
            return None
        return int(w.key), int(w.file), int(w.uid), int(w.pid), bytes(ffi.buffer(w.data, n))

    def write_done(self, write_id: int, result: int) -> bool:
        """Answer the write: `result` >= 0 bytes taken, or -errno. False if it was
        answered meanwhile."""
        return lib.icd_fuse_write_done(self._ptr, write_id, result) == 0

    def wake(self) -> None:
        """Make a blocked `requests` return."""
        lib.icd_fuse_wake(self._ptr)

    @property
    def dev(self) -> int:
        """st_dev of the mount (its /sys/fs/fuse/connections/<minor> entry)."""
        return int(lib.icd_fuse_dev(self._ptr))

    def stats(self) -> dict[str, Any]:
        """Global counters and, under "files", each file's: request counts, summed
        handling time (ns) and a latency histogram (`hist[0]` < 1 us, `hist[i]` <
        2**i us, the last bucket: more)."""
        g = ffi.new("struct icd_fuse_stats *")
        lib.icd_fuse_stats(self._ptr, g)
        out: dict[str, Any] = {k: int(getattr(g, k)) for k in _FUSE_FIELDS}
        s = ffi.new("struct icd_fuse_fstats *")
        files: dict[str, dict[str, Any]] = {}
        for fid, path in enumerate(self.paths):
            check(lib.icd_fuse_file_stats(self._ptr, fid, s), "fuse file stats")
            d: dict[str, Any] = {k: int(getattr(s, k)) for k in _FUSE_FILE_FIELDS}
            d["hist"] = [int(s.hist[i]) for i in range(FUSE_HIST)]
            files[path] = d
        out["files"] = files
        return out

    def stop(self) -> None:
        """Detach the mount, end the threads and close /dev/fuse (binds of the
        files elsewhere then fail with ENOTCONN). Idempotent; in a forked child it
        only closes the child's copies of the fds."""
        check(lib.icd_fuse_stop(self._ptr), "fuse stop")
