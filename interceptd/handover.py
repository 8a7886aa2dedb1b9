"""Restarts that running containers do not notice (docs/operations.md, "Restarts").

What must survive the daemon process, and how:

- every container's seccomp notify fds: while one is open anywhere, the container's
  notified calls wait instead of failing with ENOSYS. Each is pushed to the fd store
  (interceptd/fdstore.py) as `nfy-<key>-<n>` before the engine takes it;
- the listening sockets (`listener`, `control`, `runtime`): runc's, interceptctl's and
  interceptd-runc's connections made during the restart queue in the socket's backlog
  instead of failing;
- the FUSE connection of the emulated files (`fuse-<st_dev of the mount>`): the files
  bound into containers go on answering (interceptd/emulation/daemon.py adopts it);
- the receive journal (`journal`, interceptd/journal.py): the notifications taken off a
  notify fd but not answered yet.

What is written under `<state-dir>/handover/`, one `<key>.json` per container: what the
listener was told (id, bundle, annotations, pids), the init's start time, and per stored
fd its name and its number in the daemon (the journal names fds by number).

A successor (started by systemd with the stored fds, or handed them by `interceptctl
restart`, interceptd/reexec.py) checks each record against the fds before it trusts it:
the init must still run with the same start time, each fd must be a seccomp listener
that has tasks left; anything else is closed and dropped from the store. Then it attaches
the fds as if runc had just sent them, and answers every journaled notification the
kernel still holds as waiting (ID_VALID), by the same rules and handlers.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from interceptd import journal, procscan
from interceptd.fdstore import FdStore, hung_up
from interceptd.listener import OnMessage, is_seccomp_notify_fd
from interceptd.ocistate import ContainerState, ListenerReject, ProcessState
from interceptd.sdnotify import Notifier

if TYPE_CHECKING:
    from interceptd.dispatch import Dispatcher

log = logging.getLogger("interceptd.handover")

RECORD_DIR = "handover"
JOURNAL = "journal"
SOCKETS = ("listener", "control", "runtime")
FUSE_PREFIX = "fuse-"  # + the mount's st_dev: the successor checks the mount is that one
NOTIFY_PREFIX = "nfy-"


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a pid's process from a later one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def since_start_ms() -> float:
    """Milliseconds since this process started (its /proc stat start time)."""
    ticks = start_ticks(os.getpid()) or 0
    return round((time.clock_gettime(time.CLOCK_BOOTTIME)
                  - ticks / os.sysconf("SC_CLK_TCK")) * 1000, 1)


def container_key(cid: str) -> str:
    import hashlib  # not on a restart's path: keys are read from the records

    return hashlib.sha256(cid.encode()).hexdigest()[:16]


@dataclass
class Record:
    key: str
    id: str
    bundle: str
    annotations: dict[str, str]
    oci_version: str
    init_pid: int
    init_start: int | None
    # fd store name -> {"pid": the process that sent it, "fdno": its number here}
    fds: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        r = cls(**d)
        if not isinstance(r.fds, dict) or not isinstance(r.init_pid, int):
            raise ValueError("bad record")
        return r


@dataclass
class Adopted:
    containers: int = 0
    fds: int = 0
    discarded: list[str] = field(default_factory=list)
    replayed: int = 0
    recovered: int = 0  # of those, found by id sequence, not in the journal
    unrecovered: int = 0
    pause_ms: float = 0.0  # adoption and replay
    since_exec_ms: float = 0.0  # from this process's start to the end of the replay


class Handover:
    def __init__(self, state_dir: str, notifier: Notifier) -> None:
        self.dir = os.path.join(state_dir, RECORD_DIR)
        self.store = FdStore(notifier)
        self.inherited: dict[str, int] = {}
        self._entries: list[journal.Entry] = []
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count(int(time.time() * 1000) % 10**9)
        # old fd number -> (container id, fd number now), for the journal's entries
        self._renumbered: dict[int, tuple[str, int]] = {}
        self.adopted = Adopted()
        self.unjournaled: list[str] = []

    # -- start-up --------------------------------------------------------------

    def take(self, pairs: list[tuple[str, int]]) -> None:
        """The fds a predecessor left (systemd's LISTEN_FDS or a hand-over)."""
        for name, fd in pairs:
            old = self.inherited.get(name)
            if old is not None:  # systemd may pass two fds of one name: keep the last
                with contextlib.suppress(OSError):
                    os.close(old)
            self.inherited[name] = fd

    def open_journal(self) -> None:
        """Adopt the journal (reading what it holds, then emptying it) or make one; the
        engine writes to it from now on. Before any notify fd is attached."""
        fd = self.inherited.pop(JOURNAL, None)
        if fd is not None and journal.slots_of(fd) is None:
            log.warning("inherited journal unusable; starting a new one")
            os.close(fd)
            fd = None
        if fd is not None:
            self._entries = journal.read(fd)
            journal.reset(fd)
            self.store.keep(JOURNAL, fd)
        else:
            fd = journal.create()
            self.store.add(JOURNAL, fd)
            os.close(fd)
            fd = dict(self.store.items())[JOURNAL]
        journal.open_in_core(fd)

    def socket(self, name: str) -> socket.socket | None:
        """The predecessor's listening socket `name`, if it left one."""
        fd = self.inherited.pop(name, None)
        if fd is None:
            return None
        try:
            sock = socket.socket(fileno=fd)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
                raise OSError("not listening")
        except OSError as e:
            log.warning("inherited socket unusable", extra={"fields": {
                "name": name, "error": str(e)}})
            with contextlib.suppress(OSError):
                os.close(fd)
            return None
        self.store.keep(name, os.dup(fd))
        return sock

    def fuse(self) -> tuple[str, int, int] | None:
        """The predecessor's FUSE connection: (store name, /dev/fuse fd, the st_dev of
        its mount), or None. Any other of the kind is closed and dropped."""
        found = None
        for name in [n for n in self.inherited if n.startswith(FUSE_PREFIX)]:
            fd = self.inherited.pop(name)
            dev = name[len(FUSE_PREFIX):]
            if found is None and dev.isdigit():
                found = (name, fd, int(dev))
                continue
            with contextlib.suppress(OSError):
                os.close(fd)
            self.store.remove(name)
        return found

    def drop_fuse(self) -> None:
        """A daemon stopping for good: the connection leaves the store, so that when
        the daemon closes its own the kernel ends it (binds left in containers fail
        with ENOTCONN instead of waiting for a successor that never comes)."""
        for name, _ in self.store.items():
            if name.startswith(FUSE_PREFIX):
                self.store.remove(name)

    def keep_socket(self, name: str, sock: socket.socket) -> None:
        if name not in self.store:
            self.store.add(name, sock.fileno())

    # -- attach (the listener's callback) ----------------------------------------

    def wrap(self, on_message: OnMessage) -> OnMessage:
        """on_message that stores each accepted notify fd, and its record, first."""

        def storing(st: ProcessState, fd: int) -> None:
            dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            try:
                name = self._remember(st, fd, dup) if st.is_init else None
                try:
                    on_message(st, fd)
                except BaseException:
                    if name is not None:
                        self._forget_fd(st.state.id, name)
                    raise
                if name is None:
                    self._remember(st, fd, dup)
            finally:
                os.close(dup)

        return storing

    def _remember(self, st: ProcessState, fd: int, dup: int) -> str:
        with self._lock:
            rec = self._records.get(st.state.id)
            if rec is None or st.is_init:
                init = st.init_pid
                rec = Record(container_key(st.state.id), st.state.id, st.state.bundle,
                             dict(st.state.annotations), st.oci_version, init,
                             start_ticks(init))
                self._records[st.state.id] = rec
            else:
                self.store.prune(f"{NOTIFY_PREFIX}{rec.key}-")  # ended exec'd processes
            name = f"{NOTIFY_PREFIX}{rec.key}-{next(self._seq)}"
            rec.fds = {n: v for n, v in rec.fds.items() if n in self.store}
            rec.fds[name] = {"pid": st.pid, "fdno": fd}
            self.store.add(name, dup)
            self._save(rec)
        return name

    def _forget_fd(self, cid: str, name: str) -> None:
        with self._lock:
            self.store.remove(name)
            rec = self._records.get(cid)
            if rec is not None:
                rec.fds.pop(name, None)
                if rec.fds:
                    self._save(rec)
                else:
                    self._drop(rec)

    # -- the dispatcher's watcher: a released container's fds leave the store -----

    def track(self, cid: str, cgroup: str) -> None:
        pass

    def untrack(self, cid: str) -> None:
        with self._lock:
            rec = self._records.pop(cid, None)
            if rec is not None:
                self._drop(rec)

    def _drop(self, rec: Record) -> None:
        for name in rec.fds:
            self.store.remove(name)
        self._records.pop(rec.id, None)
        with contextlib.suppress(OSError):
            os.unlink(self._path(rec.key))

    # -- records ------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, f"{key}.json")

    def _save(self, rec: Record) -> None:
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            tmp = f"{self._path(rec.key)}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(asdict(rec), f)
            os.replace(tmp, self._path(rec.key))
        except OSError as e:
            # The fd is in the store all the same; without its record a successor
            # closes it, and the container's notified calls then fail.
            log.error("hand-over record not written", extra={"fields": {
                "container": rec.id, "error": str(e)}})

    def _load_records(self) -> list[Record]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.dir)):
                path = os.path.join(self.dir, name)
                if not name.endswith(".json"):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    continue
                try:
                    with open(path, encoding="utf-8") as f:
                        out.append(Record.from_dict(json.load(f)))
                except (OSError, ValueError, TypeError) as e:
                    log.warning("hand-over record unreadable; dropped",
                                extra={"fields": {"path": path, "error": str(e)}})
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        return out

    # -- adoption -------------------------------------------------------------------

    def adopt(self, on_message: OnMessage) -> Adopted:
        """Attach the inherited notify fds whose record checks out; drop the rest."""
        a = self.adopted
        for rec in self._load_records():
            why = self._adopt_one(rec, on_message)
            if why:
                a.discarded.append(f"{rec.id}: {why}")
                log.warning("container not re-adopted", extra={"fields": {
                    "container": rec.id, "reason": why}})
        for name, fd in list(self.inherited.items()):
            if name.startswith(NOTIFY_PREFIX):
                self.inherited.pop(name)
                with contextlib.suppress(OSError):
                    os.close(fd)
                self.store.remove(name)  # FDSTOREREMOVE: systemd's copy goes too
                a.discarded.append(f"{name}: no record")
        return a

    def _adopt_one(self, rec: Record, on_message: OnMessage) -> str:
        fds = [(n, self.inherited.pop(n)) for n in rec.fds if n in self.inherited]
        reason = ""
        if rec.init_start is None or start_ticks(rec.init_pid) != rec.init_start:
            reason = f"init {rec.init_pid} is gone (or its pid was reused)"
        good, bad = [], []
        for n, fd in fds:
            ok = not reason and is_seccomp_notify_fd(fd) and not hung_up(fd)
            (good if ok else bad).append((n, fd))
            if not ok:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if not good:
            self._drop(rec)  # every name of the record leaves the store
            return reason or "no live notify fd"
        for n, _ in bad:
            self.store.remove(n)
        self._records[rec.id] = rec
        for n, fd in good:
            self._recover_unjournaled(rec, int(rec.fds[n].get("fdno", -1)), fd)
        first = True
        kept: dict[str, dict[str, int]] = {}
        for n, fd in good:
            info = rec.fds[n]
            st = ProcessState(
                oci_version=rec.oci_version, fds=["seccompFd"], pid=info.get("pid", 0),
                metadata="",
                state=ContainerState(rec.oci_version, rec.id, "created" if first else "running",
                                     rec.init_pid, rec.bundle, dict(rec.annotations)))
            self.store.keep(n, fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
            try:
                on_message(st, fd)
            except (ListenerReject, OSError) as e:
                os.close(fd)
                self.store.remove(n)
                if first:
                    self._drop(rec)
                    return f"attach refused: {e}"
                continue
            first = False
            self._renumbered[int(info.get("fdno", -1))] = (rec.id, fd)
            kept[n] = {"pid": int(info.get("pid", 0)), "fdno": fd}
            self.adopted.fds += 1
        rec.fds = kept
        self._save(rec)
        self.adopted.containers += 1
        return ""

    def _recover_unjournaled(self, rec: Record, old: int, fd: int) -> None:
        """Before the fd is attached (nothing receives on it yet), the notifications the
        kernel holds as sent are exactly the ones the predecessor received and did not
        answer. The kernel numbers a filter's notifications in sequence, so one received
        but missing from the journal has an id just past the last journaled one. Its
        call is read from /proc/<tid>/syscall when exactly one thread of the container
        waits in a syscall without a journaled notification (else it is logged)."""
        from interceptd import core, syscalls

        mine = [e for e in self._entries if e.fd == old]
        if not mine:
            return
        top = max(e.id for e in mine)
        known = {e.id for e in mine}
        lost = []
        for nid in range(top + 1, top + 33):
            with contextlib.suppress(OSError):
                if nid not in known and core.id_valid(fd, nid):
                    lost.append(nid)
        if not lost:
            return
        busy = {e.pid for e in mine if _waiting(fd, e.id)}
        notified = procscan.notified_nrs(rec.bundle)
        waiting = [t for t in procscan.waiting_threads(rec.init_pid) if t[0] not in busy
                   and (notified is None or t[1] in notified)]
        if len(lost) == 1 and len(waiting) == 1:
            tid, nr, args, ip = waiting[0]
            self._entries.append(journal.Entry(old, lost[0], tid, nr, syscalls.AUDIT_ARCH_X86_64,
                                               ip, args))
            self.adopted.recovered += 1
            log.warning("a received notification missing from the journal was recovered",
                        extra={"fields": {"container": rec.id, "tid": tid, "nr": nr}})
        else:
            self.adopted.unrecovered += len(lost)
            log.error("received notifications missing from the journal", extra={"fields": {
                "container": rec.id, "ids": len(lost), "candidate_threads": len(waiting)}})

    def replay(self, answer: Callable[[str, journal.Entry, int], bool]) -> int:
        """Hand every journaled notification still waiting (ID_VALID) to `answer`
        (container id, entry, the fd's number now); how many were answered."""
        from interceptd import core

        n = 0
        for e in journal.unanswered_candidates(self._entries):
            hit = self._renumbered.get(e.fd)
            if hit is None:
                continue
            cid, fd = hit
            try:
                if not core.id_valid(fd, e.id):
                    continue
            except OSError:
                continue
            if answer(cid, e, fd):
                n += 1
        self._entries = []
        self.adopted.replayed += n
        if n:
            log.info("answered notifications left by the predecessor", extra={"fields": {
                "count": n}})
        return n

    def close_unused(self) -> None:
        """Inherited fds nobody claimed (a socket this daemon no longer uses)."""
        for name, fd in list(self.inherited.items()):
            with contextlib.suppress(OSError):
                os.close(fd)
            self.inherited.pop(name)


def answer_through(dispatcher: Dispatcher) -> Callable[[str, journal.Entry, int], bool]:
    """Answers a replayed notification as the receiver would have: a verdict-table rule
    at once, anything else through the dispatcher's handler path."""
    from interceptd import core
    from interceptd.verdict import FAST_CONTINUE, FAST_ERRNO, FAST_PYTHON, FAST_VALUE

    rules = {e.nr: e for e in dispatcher.table}

    def answer(cid: str, e: journal.Entry, fd: int) -> bool:
        c = dispatcher.registry.get(cid)
        if c is None:
            return False
        n = core.Notification(e.id, e.pid, e.nr, e.arch, e.ip, e.args, fd)
        rule = rules.get(e.nr) if e.arch == dispatcher.native_arch else None
        if e.done is not None:  # acted on by the predecessor: only its answer is missing
            c.channel.answer(n, 0, e.done, 0)
        elif rule is None or rule.action == FAST_PYTHON:
            # The worker's own path (handler, answer, event); fail-closed default included.
            dispatcher.handle(c, n, {})
        elif rule.action == FAST_CONTINUE:
            c.channel.answer(n, 0, 0, dispatcher.flag_continue)
        elif rule.action == FAST_ERRNO:
            c.channel.answer(n, 0, rule.value, 0)
        elif rule.action == FAST_VALUE:
            c.channel.answer(n, rule.value, 0, 0)
        return True

    return answer


def _waiting(fd: int, nid: int) -> bool:
    from interceptd import core

    try:
        return bool(core.id_valid(fd, nid))
    except OSError:
        return False

