"""The daemon's side of the emulated files: the FUSE tree under <state-dir>/fs, one
registration per container, and the renders the tree asks for.

`Emulation.start` mounts the tree (a failure is the caller's to log: the daemon runs
on without emulation); `attach(container)` registers the container's init's pid
namespace under the container's cookie and works out once where its cgroups live;
`release(container)` forgets both. Renders run on the service's renderer thread
(never a reader's): a snapshot of the container's cgroups and the host's facts,
each reused for `SNAPSHOT_TTL` so that the several files a tool opens at once
(`top` reads five) cost one snapshot. See docs/emulation-fuse.md "In the daemon".
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from interceptd.emulation import cgpaths, loadavg, registry, tasks
from interceptd.emulation.fuseserver import EmulatedFile, FuseService, fs_dir
from interceptd.emulation.hostfacts import HostFacts, read_host
from interceptd.emulation.snapshot import CgroupSnapshot, read_snapshot, start_of
from interceptd.handlers import sysinfo

log = logging.getLogger("interceptd.emulation")

SNAPSHOT_TTL = 0.1  # seconds: below every file's `fresh`, so no render serves older figures


def tree_path(container_path: str) -> str:
    """"/proc/meminfo" -> "proc/meminfo": where a file sits in the tree."""
    return container_path.lstrip("/")


def emulated_files() -> list[EmulatedFile]:
    return [EmulatedFile(tree_path(p)) for p in registry.FILES]


@dataclass
class _Source:
    """Where one container's figures live (its init's cgroups and start do not change)."""

    container_id: str
    init_pid: int
    paths: cgpaths.CgroupPaths
    start: float | None
    nsfd: int
    ns_ino: int = 0
    snap: CgroupSnapshot | None = None
    snap_at: float = 0.0
    load: loadavg.LoadState = field(default_factory=loadavg.LoadState)


class Emulation:
    def __init__(self, state_dir: str, *, service: FuseService | None = None) -> None:
        self.mountpoint = fs_dir(state_dir)
        self.service = service or FuseService(self.mountpoint, emulated_files(), self.render)
        self._sources: dict[int, _Source] = {}
        self._lock = threading.Lock()
        self._reg_lock = threading.Lock()  # registrations and their hand-overs, in order
        self._owner: dict[int, int] = {}  # pid namespace inode -> the key registered for it
        self._host: tuple[float, HostFacts] | None = None
        self._mounts: cgpaths.Mounts | None = None
        self._clk_tck = os.sysconf("SC_CLK_TCK")

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            self._mounts = cgpaths.parse_mountinfo(f.read())
        self.service.start()
        sysinfo.loads_provider = self.loads_of  # sysinfo(2) agrees with /proc/loadavg

    def stop(self) -> None:
        if sysinfo.loads_provider == self.loads_of:
            sysinfo.loads_provider = None
        self.service.stop()
        with self._lock:
            srcs, self._sources = list(self._sources.values()), {}
        for s in srcs:
            with contextlib.suppress(OSError):
                os.close(s.nsfd)

    def status(self) -> dict[str, Any]:
        """What interceptd-runc needs to bind the files: the tree and its files."""
        return {"fs": self.mountpoint, "files": list(registry.FILES)}

    # -- containers -----------------------------------------------------------

    def attach(self, c: Any) -> None:
        """Register container `c` (its cookie is the key). The pid namespace is taken
        from /proc/<init>/ns/pid and kept only if the init's pidfd still shows it
        alive afterwards, so a reused pid cannot register someone else's namespace."""
        key = int(c.cookie)
        with self._lock:
            if key in self._sources:
                return
        pid = c.init_pid
        nsfd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            pidfd = getattr(c, "pidfd", -1)
            if pidfd >= 0:
                import signal

                signal.pidfd_send_signal(pidfd, 0)  # ProcessLookupError: it died
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
                own = cgpaths.parse_proc_cgroup(f.read())
            assert self._mounts is not None, "attach before start"
            paths = cgpaths.locate(own, self._mounts)
            src = _Source(str(c.id), pid, paths, start_of("/proc", pid, self._clk_tck), nsfd)
        except BaseException:
            os.close(nsfd)
            raise
        src.ns_ino = os.fstat(nsfd).st_ino
        with self._reg_lock:
            with self._lock:
                owner = self._owner.get(src.ns_ino)
                # Known before the server is told: a reader already waiting for
                # this namespace gets its render requested by the registration.
                self._sources[key] = src
            if owner is not None:
                # A pid namespace shared with a container already registered
                # (--pid=container:X, a pod): its readers are that one's; this
                # container takes the namespace over when that one goes.
                log.info("emulation attach: pid namespace shared", extra={"fields": {
                    "container": c.id, "key": key, "with": owner}})
                return
            try:
                self.service.register_nsfd(key, nsfd)
            except BaseException:
                with self._lock:
                    self._sources.pop(key, None)
                os.close(nsfd)
                raise
            with self._lock:
                self._owner[src.ns_ino] = key
        log.info("emulation attach", extra={"fields": {"container": c.id, "key": key}})

    def release(self, c: Any) -> None:
        key = int(c.cookie)
        with self._reg_lock:
            with self._lock:
                src = self._sources.pop(key, None)
                if src is None:
                    return
                heir = None
                owner = self._owner.get(src.ns_ino) == key
                if owner:
                    del self._owner[src.ns_ino]
                    heir = next((k for k, s in self._sources.items()
                                 if s.ns_ino == src.ns_ino), None)
            if owner:  # a mere sharer leaves the registration as it is
                self.service.unregister(key)
            if heir is not None:
                # Readers opening in between wait for the registration (never EIO).
                try:
                    self.service.register_nsfd(heir, self._sources[heir].nsfd)
                    with self._lock:
                        self._owner[src.ns_ino] = heir
                except OSError as e:
                    log.warning("emulation: shared pid namespace not handed over",
                                extra={"fields": {"key": heir, "error": str(e)}})
        os.close(src.nsfd)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sources)

    # -- renders (the service's renderer thread) ----------------------------------

    def _host_facts(self, now: float) -> HostFacts:
        h = self._host
        if h is None or now - h[0] >= SNAPSHOT_TTL:
            h = self._host = (now, read_host())
        return h[1]

    def render(self, key: int, path: str) -> bytes:
        with self._lock:
            src = self._sources.get(key)
        if src is None:
            raise LookupError(f"container {key} is not registered")
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        host = self._host_facts(now)
        if src.snap is None or now - src.snap_at >= SNAPSHOT_TTL:
            snap = read_snapshot(src.paths, host, init_pid=src.init_pid, boot=src.start)
            src.snap, src.snap_at = snap, now
            t = snap.tasks
            active = t.running + t.blocked if t is not None else 0
            with self._lock:
                if now - src.load.at >= loadavg.SAMPLE_SECONDS:
                    src.load = loadavg.catch_up(src.load, active, now)
        inp = registry.RenderInput(snap=src.snap, host=host, now=now,
                                   container_id=src.container_id, load=src.load)
        return registry.render("/" + path, inp)

    # -- sysinfo(2)'s load averages (the policy's handler, a worker thread) ----------

    def loads_of(self, init_pid: int) -> tuple[int, int, int] | None:
        """The load averages /proc/loadavg shows the container whose init is `init_pid`,
        as sysinfo(2) gives them; sampled here when the last sample is a period old
        (nobody read /proc/loadavg meanwhile). None: not a registered container."""
        with self._lock:
            src = next((s for s in self._sources.values() if s.init_pid == init_pid), None)
        if src is None:
            return None
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        if now - src.load.at >= loadavg.SAMPLE_SECONDS:
            t = tasks.summarize(src.paths, "/proc", src.init_pid)
            with self._lock:
                if now - src.load.at >= loadavg.SAMPLE_SECONDS:
                    src.load = loadavg.catch_up(src.load, t.running + t.blocked, now)
        return loadavg.sysinfo_loads(src.load)
