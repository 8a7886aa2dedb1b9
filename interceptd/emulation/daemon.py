"""The daemon's side of the emulated files: the FUSE tree under <state-dir>/fs, one
registration per container, and the renders the tree asks for.

`Emulation.start` mounts the tree (a failure is the caller's to log: the daemon runs
on without emulation); `attach(container)` registers the container's init's pid
namespace under the container's cookie and works out once where its cgroups live;
`release(container)` forgets both. Renders run on the service's renderer thread
(never a reader's): a snapshot of the container's cgroups and the host's facts,
each reused for `SNAPSHOT_TTL` so that the several files a tool opens at once
(`top` reads five) cost one snapshot. Writes to the /proc/sys values the tree serves
are decided by `procsys` and performed here (`write`). See docs/emulation-fuse.md "In
the daemon" and docs/emulation.md "/proc/sys".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from interceptd.emulation import (
    cgpaths,
    iostat,
    loadavg,
    procsys,
    registry,
    sysctlbinds,
    tasks,
    utsns,
)
from interceptd.emulation.fuseserver import EmulatedFile, FuseService, fs_dir
from interceptd.emulation.hostfacts import HostFacts, read_host
from interceptd.emulation.snapshot import CgroupSnapshot, read_snapshot, start_of
from interceptd.handlers import sysinfo
from interceptd.seams import Container

log = logging.getLogger("interceptd.emulation")

SNAPSHOT_TTL = 0.1  # seconds: below every file's `fresh`, so no render serves older figures
# What a /proc/sys render is given before the container's first cgroup snapshot (unused).
_EMPTY = CgroupSnapshot(layout="v2", mem_limit=0, mem_accounted=False, mem_limited=False,
                        mem_usage=0)


def tree_path(container_path: str) -> str:
    """"/proc/meminfo" -> "proc/meminfo": where a file sits in the tree."""
    return container_path.lstrip("/")


# The container changes its UTS names without us (sethostname(2)): its hostname is read
# afresh at each open (a render per open, on the renderer thread), never from bytes kept.
_FRESH_EACH_OPEN = {f"{registry.SYSCTL_ROOT}/{n}" for n in procsys.UTS}


def emulated_files() -> list[EmulatedFile]:
    return [EmulatedFile(tree_path(p), writable=p in registry.WRITABLE,
                         **({"fresh": 0.0, "max_stale": 0.0} if p in _FRESH_EACH_OPEN else {}))
            for p in registry.FILES]


def root_uid(uid_map: str) -> int | None:
    """The host uid of uid 0 in a user namespace (its /proc/<pid>/uid_map), or None."""
    for line in uid_map.splitlines():
        f = line.split()
        if len(f) == 3 and f[0] == "0" and int(f[2]) > 0:
            return int(f[1])
    return None


def read_sysctl(name: str, proc: str = "/proc") -> str | None:
    """The daemon's (the host's) value of sysctl `name`, None where there is none."""
    try:
        with open(f"{proc}/sys/{name}", encoding="ascii", errors="replace") as f:
            return f.read(procsys.MAX_VALUE_LEN + 1)
    except OSError:
        return None


@dataclass
class _Source:
    """Where one container's figures live (its init's cgroups and start do not change)."""

    container_id: str
    init_pid: int
    paths: cgpaths.CgroupPaths
    start: float | None
    nsfd: int
    ns_ino: int = 0
    root_uid: int | None = None  # its root as the host sees it: who may write /proc/sys
    utsfd: int = -1  # its UTS namespace (kernel/hostname, kernel/domainname)
    sysctl: dict[str, str] = field(default_factory=dict)  # its own /proc/sys values
    snap: CgroupSnapshot | None = None
    snap_at: float = 0.0
    load: loadavg.LoadState = field(default_factory=loadavg.LoadState)


class Emulation:
    def __init__(self, state_dir: str, *, service: FuseService | None = None) -> None:
        self.mountpoint = fs_dir(state_dir)
        self.service = service or FuseService(self.mountpoint, emulated_files(), self.render,
                                              write=self.write)
        self.proc = "/proc"  # where the host's sysctls are read and raised (tests move it)
        self._sources: dict[int, _Source] = {}
        self._lock = threading.Lock()
        self._reg_lock = threading.Lock()  # registrations and their hand-overs, in order
        self._owner: dict[int, int] = {}  # pid namespace inode -> the key registered for it
        self._host: tuple[float, HostFacts] | None = None
        self._mounts: cgpaths.Mounts | None = None
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        self._disks = iostat.host_disks()  # where v1 containers get the throttle rule
        self._adopting = False  # adopted, not served yet: binds wait (serve)
        self._deferred: list[tuple[str, int]] = []

    # -- lifecycle ----------------------------------------------------------

    def adopt(self, fd: int, dev: int) -> bool:
        """Before `start`: take over a predecessor's connection (its /dev/fuse fd, the
        mount's st_dev) still mounted here. Nothing is read from it before `serve`, so
        the containers can be registered first and no reader of theirs finds its
        namespace unknown. False when it cannot be: `start` then mounts a new tree
        (the caller drops the old connection first: its binds in containers fail)."""
        try:
            self.service.adopt(fd, dev)
        except OSError as e:
            log.warning("emulation: the predecessor's FUSE connection not adopted",
                        extra={"fields": {"error": str(e)}})
            return False
        self._adopting = True
        return True

    def start(self) -> None:
        """Mount the tree (unless adopted) and render from now on."""
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            self._mounts = cgpaths.parse_mountinfo(f.read())
        if not self._adopting:
            self.service.start()
        sysinfo.loads_provider = self.loads_of  # sysinfo(2) agrees with /proc/loadavg

    def connection(self) -> tuple[int, int]:
        """The /dev/fuse fd (the server's own) and the mount's st_dev: the fd store
        keeps a duplicate under a name carrying the st_dev (interceptd/handover.py)."""
        return self.service.server.fd, self.service.server.dev

    def serve(self) -> None:
        """After an adoption and the containers' registration: serve the connection
        (the requests the predecessor left first), then check or make the /proc/sys
        binds of the containers registered meanwhile (checking them reads the tree,
        which waits for a server)."""
        if not self._adopting:
            return
        self.service.serve()
        with self._reg_lock:
            self._adopting = False
            deferred, self._deferred = self._deferred, []
        for cid, pid in deferred:
            self._bind_sysctls(cid, pid)

    def stop(self) -> None:
        if sysinfo.loads_provider == self.loads_of:
            sysinfo.loads_provider = None
        self.service.stop()
        with self._lock:
            srcs, self._sources = list(self._sources.values()), {}
        for s in srcs:
            for fd in (s.nsfd, s.utsfd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def status(self) -> dict[str, Any]:
        """What interceptd-runc needs to bind the files: the tree and its files."""
        return {"fs": self.mountpoint, "files": list(registry.FILES)}

    # -- containers -----------------------------------------------------------

    def attach(self, c: Container) -> None:
        """Register container `c` (its cookie is the key). The pid namespace is taken
        from /proc/<init>/ns/pid and kept only if the init's pidfd still shows it
        alive afterwards, so a reused pid cannot register someone else's namespace."""
        key = int(c.cookie)
        with self._lock:
            if key in self._sources:
                return
        pid = c.init_pid
        nsfd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        utsfd = -1
        try:
            utsfd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
            pidfd = c.pidfd
            if pidfd >= 0:
                import signal

                signal.pidfd_send_signal(pidfd, 0)  # ProcessLookupError: it died
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
                own = cgpaths.parse_proc_cgroup(f.read())
            assert self._mounts is not None, "attach before start"
            paths = cgpaths.locate(own, self._mounts)
            src = _Source(str(c.id), pid, paths, start_of("/proc", pid, self._clk_tck), nsfd)
            src.utsfd = utsfd  # opened before the pidfd showed the init alive
            with open(f"/proc/{pid}/uid_map", encoding="ascii") as f:
                src.root_uid = root_uid(f.read())
            if errs := iostat.enable_v1_accounting(paths, self._disks):
                log.warning("emulation: v1 blkio accounting not enabled (diskstats stays "
                            "empty for those disks)", extra={"fields": {
                                "container": c.id, "errors": errs[:4]}})
        except BaseException:
            os.close(nsfd)
            if utsfd >= 0:
                os.close(utsfd)
            raise
        src.ns_ino = os.fstat(nsfd).st_ino
        with self._reg_lock:
            with self._lock:
                owner = self._owner.get(src.ns_ino)
                # Known before the server is told: a reader already waiting for
                # this namespace gets its render requested by the registration.
                self._sources[key] = src
            if self._adopting:
                self._deferred.append((str(c.id), pid))
            else:
                self._bind_sysctls(c.id, pid)
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
                os.close(utsfd)
                raise
            with self._lock:
                self._owner[src.ns_ino] = key
        log.info("emulation attach", extra={"fields": {"container": c.id, "key": key}})

    def _bind_sysctls(self, cid: str, pid: int) -> None:
        """The /proc/sys values, over the container's own files where interceptd-runc's
        hook has not bound them before the container ran (docs/emulation.md
        "/proc/sys": runc refuses them as config mounts). A failure leaves the kernel's
        file: the host's value, EACCES to a write."""
        paths = [p for p in registry.SYSCTL_FILES if os.path.exists(p)]
        try:
            # What the hook bound needs no thread in the container's namespaces.
            have = sysctlbinds.bound_already(pid, self.service.server.dev, paths)
            todo = [p for p in paths if p not in have]
            done, _kept, errors = (sysctlbinds.bind(pid, self.mountpoint, todo) if todo
                                   else ([], [], []))
        except OSError as e:
            done, errors = [], [str(e)]
        if done:  # the container may have met the kernel's files until now
            log.info("emulation: /proc/sys values bound at attach", extra={"fields": {
                "container": cid, "bound": len(done)}})
        if errors:
            log.warning("emulation: /proc/sys values not all bound", extra={"fields": {
                "container": cid, "bound": len(done), "errors": errors[:4]}})

    def release(self, c: Container) -> None:
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
        if src.utsfd >= 0:
            os.close(src.utsfd)

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
        name = registry.SYSCTL_FILES.get("/" + path)
        if name is not None:  # a /proc/sys value: no cgroup figures needed
            with self._lock:
                state = dict(src.sysctl)
            value = (utsns.read(src.utsfd, name) if name in procsys.UTS
                     else read_sysctl(name, self.proc))
            inp = registry.RenderInput(snap=src.snap or _EMPTY, host=host, now=now,
                                       sysctl_state=state, sysctl_host=value)
            return registry.render("/" + path, inp)
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

    # -- /proc/sys writes (the service's renderer thread, in order with renders) ----

    def write(self, key: int, path: str, data: bytes, uid: int, pid: int) -> int:
        """A container's write to one of the /proc/sys values the tree serves: bytes
        taken, or -errno. Only the container's root writes (the kernel lets only the
        initial namespace's root write a host-wide sysctl); `procsys.decide_write`
        decides; a "max" value is raised on the host here."""
        with self._lock:
            src = self._sources.get(key)
        name = registry.SYSCTL_FILES.get("/" + path)
        fields: dict[str, Any] = {"container": src.container_id if src else key,
                                  "sysctl": name, "pid": pid, "uid": uid}
        if src is None or name is None:
            return self._refuse(errno.EIO, "not a served sysctl of a known container", fields)
        if src.root_uid is None or uid != src.root_uid:
            return self._refuse(errno.EACCES, "only the container's root writes sysctls",
                                fields)
        value = data.decode("ascii", errors="replace")
        fields["value"] = value.strip()[:64]
        with self._lock:
            state = dict(src.sysctl)
        d, new = procsys.decide_write(name, value, state, read_sysctl(name, self.proc))
        if d.action is procsys.Action.DENY:
            return self._refuse(d.errno, d.reason, fields)
        if d.action is procsys.Action.PASS:
            return self._pass_uts(key, path, name, value, data, fields, src)
        if d.action is procsys.Action.RAISE:
            try:
                with open(f"{self.proc}/sys/{name}", "w", encoding="ascii") as f:
                    f.write(d.value + "\n")
            except OSError as e:
                return self._refuse(e.errno or errno.EIO, f"{name}: host not raised: {e}",
                                    fields)
        with self._lock:
            src.sysctl = new
        log.info("sysctl write: %s", d.reason,
                 extra={"fields": {**fields, "action": d.action.value}})
        self.service.refresh(key, path)  # the writer's next read shows it
        return len(data)

    def _pass_uts(self, key: int, path: str, name: str, value: str, data: bytes,
                  fields: dict[str, Any], src: _Source) -> int:
        """hostname/domainname: written in the container's own UTS namespace, never in
        the host's (a container sharing it gets EACCES, as from the kernel)."""
        if name not in procsys.UTS or src.utsfd < 0:
            return self._refuse(errno.EACCES, f"{name}: not passed on", fields)
        if utsns.is_hosts(src.utsfd):
            return self._refuse(errno.EACCES, f"{name}: the container shares the host's "
                                "UTS namespace", fields)
        text = value.split("\n", 1)[0]  # the kernel stops at the first newline
        if len(text.encode()) > utsns.MAX_LEN:
            return self._refuse(errno.EINVAL, f"{name}: longer than {utsns.MAX_LEN}", fields)
        try:
            utsns.write(src.utsfd, name, text)
        except OSError as e:
            return self._refuse(e.errno or errno.EIO, f"{name}: {e.strerror}", fields)
        log.info("sysctl write: %s: in its own UTS namespace", name,
                 extra={"fields": {**fields, "action": "pass"}})
        self.service.refresh(key, path)
        return len(data)

    @staticmethod
    def _refuse(code: int, reason: str, fields: dict[str, Any]) -> int:
        log.warning("sysctl write refused: %s", reason,
                    extra={"fields": {**fields, "errno": errno.errorcode.get(code, code),
                                      "reason": reason}})
        return -code

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
