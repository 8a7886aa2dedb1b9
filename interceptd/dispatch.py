"""Containers' notify fds → channels of the C engine → per-container Python workers.

Each container gets one channel (its verdict table, its queue for the Python path) and one
worker thread blocked in `Channel.wait()`; how the workers share the daemon's time and
interpreter is fairshare.py's. Fast-path decisions are drained by a pump thread (pump.py).
"""

from __future__ import annotations

import collections
import contextlib
import errno as errno_mod
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

from interceptd import quiesce
from interceptd.events import Counters, Event, EventBus
from interceptd.fairshare import Shares
from interceptd.handlers import Handler, HandlerRegistry, Request
from interceptd.kernel import procinfo
from interceptd.ocistate import ListenerReject, ProcessState
from interceptd.pump import PUMP_INTERVAL, DecisionPump
from interceptd.registry import (
    Container,
    Registry,
    close_container_fds,
    read_cgroup_paths,
    read_id_maps,
)
from interceptd.seams import Channel, Core, Engine, Notification, Watcher
from interceptd.syscalls import AUDIT_ARCH_X86_64
from interceptd.tally import CallTally, LocalTally
from interceptd.verdict import (
    FAST_CONTINUE,
    FAST_ERRNO,
    FAST_PYTHON,
    FAST_VALUE,
    TableEntry,
    Verdict,
)

log = logging.getLogger("interceptd.dispatch")

UNHANDLED = Verdict.errno(errno_mod.EPERM, "unhandled")
UNSUPPORTED_ARCH = Verdict.errno(errno_mod.EPERM, "unsupported arch")
# How long an exec'd process's message waits for its container's init message:
# crun's `start` can return (and a `docker exec` follow) before the daemon has
# registered the container, and a refused fd fails the process's calls (ENOSYS).
EXEC_WAIT = 2.0


class Dispatcher:
    def __init__(
        self,
        core: Core,
        engine: Engine,
        registry: Registry,
        handlers: HandlerRegistry,
        table: list[TableEntry],
        bus: EventBus,
        counters: Counters,
        *,
        name_of: Callable[[int], str],
        native_arch: int = AUDIT_ARCH_X86_64,
        comm_of: Callable[[int], str] = procinfo.read_comm,
    ) -> None:
        self.core = core
        self.engine = engine
        self.registry = registry
        self.handlers = handlers
        self.table = table
        self.bus = bus
        self.counters = counters
        self._name_of = name_of
        self.native_arch = native_arch
        self._comm_of = comm_of
        self._actions = {
            FAST_CONTINUE: core.ACT_CONTINUE,
            FAST_ERRNO: core.ACT_ERRNO,
            FAST_VALUE: core.ACT_VALUE,
            FAST_PYTHON: core.ACT_PYTHON,
        }
        self._verdict_of_action = {
            core.ACT_CONTINUE: "continue", core.ACT_ERRNO: "errno", core.ACT_VALUE: "value"}
        self._rule_nrs = {e.nr: e for e in table if e.action != FAST_PYTHON}
        self._cookies = itertools.count(1)
        self._cookie_ids: dict[int, str] = {}
        self._containers_by_cookie: dict[int, Container] = {}
        self._retired: collections.deque[tuple[float, int]] = collections.deque()
        self._workers: dict[str, threading.Thread] = {}
        self._routes: dict[int, tuple[str, Handler | None]] = {}
        self._released: set[int] = set()
        # fn(container) after a container's first attach (listener thread): keep it short.
        self.attach_hooks: list[Callable[[Container], None]] = []
        self._release_lock = threading.Lock()
        self._stop = threading.Event()
        self._frozen = threading.Event()  # a hand-over: workers stop between calls
        self._gate = threading.Event()  # cleared while adopting: see hold()
        self._gate.set()
        self._held: list[Container] = []
        self._pump: threading.Thread | None = None
        self.exec_wait = EXEC_WAIT
        self.shares = Shares()  # how the workers share the daemon (fairshare.py)
        self.flag_continue = core.FLAG_CONTINUE
        self._target_gone = core.TargetGone
        self._registered = threading.Condition(registry.lock)  # a container was added
        # For the metrics exporter (read at scrape time): calls by path, syscall
        # and verdict, and the channel counts of containers already gone.
        self.calls = CallTally()
        self.retired_stats: collections.Counter[str] = collections.Counter()
        self._pumper = DecisionPump(
            verdict_of_action=self._verdict_of_action, bus=bus, counters=counters,
            calls=self.calls.local(), name_of=self._syscall_name,
            comm_of=lambda pid: self._comm_of(pid),
            containers=self._containers_by_cookie, container_ids=self._cookie_ids,
            is_rule=lambda nr: nr in self._rule_nrs)  # reload replaces _rule_nrs
        # Told of each container's attach and release (the eBPF layer, the hand-over).
        self.watchers: list[Watcher] = []

    # -- attach (listener thread) ------------------------------------------

    def on_message(self, st: ProcessState, fd: int) -> None:
        """Listener callback: take `fd` or raise ListenerReject (listener closes it)."""
        if self._stop.is_set():
            raise ListenerReject("shutting down")
        with self.registry.lock:
            c = self.registry.get(st.state.id)
            if c is None and not st.is_init:
                c = self._await_init(st.state.id)
            if c is None:
                if not st.is_init:
                    raise ListenerReject("unknown container", f"{st.state.id}: no init message "
                                                              f"within {self.exec_wait:g} s")
                self._add_container(st, fd)
                self._registered.notify_all()
                return
            if not c.sent(st):
                raise ListenerReject(
                    "duplicate id",
                    f"{st.state.id} has init {c.init_pid} bundle {c.bundle}; message says "
                    f"init {st.init_pid} bundle {st.state.bundle}",
                )
            self._attach_fd(c, fd, st.pid)

    def _await_init(self, cid: str) -> Container | None:
        """Under registry.lock (released while waiting): the container `cid` once
        its init message has registered it, or None after `exec_wait` seconds.
        The listener serves each connection on its own thread, so the init's
        connection is not held up by this one."""
        deadline = time.monotonic() + self.exec_wait
        t0 = time.monotonic()
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._registered.wait(min(left, 0.25))
            c = self.registry.get(cid)
            if c is not None:
                log.info("exec waited for init", extra={"fields": {
                    "container": cid, "waited_ms": round((time.monotonic() - t0) * 1000)}})
                return c
        return None

    def _add_container(self, st: ProcessState, fd: int) -> None:
        pid = st.init_pid
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            raise ListenerReject("target gone", f"pidfd_open({pid}): {e.strerror}") from None
        try:
            cgroups = read_cgroup_paths(pid)
            uid_map, gid_map = read_id_maps(pid)
        except OSError as e:
            os.close(pidfd)
            raise ListenerReject("target gone", f"/proc/{pid}: {e.strerror}") from None
        cookie = next(self._cookies)
        channel = self.engine.channel(cookie)
        try:
            for entry in self.table:
                channel.set_rule(entry.nr, self._actions[entry.action], entry.value)
            channel.set_default(self.core.ACT_ERRNO, errno_mod.EPERM)
        except Exception:
            channel.close()
            os.close(pidfd)
            raise
        c = Container(
            id=st.state.id,
            bundle=st.state.bundle,
            annotations=dict(st.state.annotations),
            init_pid=pid,
            pidfd=pidfd,
            cgroup_paths=cgroups,
            uid_map=uid_map,
            gid_map=gid_map,
            channel=channel,
            cookie=cookie,
        )
        try:
            self.engine.attach(channel, fd)
        except OSError as e:
            channel.close()
            os.close(pidfd)
            raise ListenerReject("attach failed", e.strerror or str(e)) from None
        c.notify_fds.append(fd)
        self.registry.add(c)
        self._cookie_ids[cookie] = c.id
        self._containers_by_cookie[cookie] = c
        self.counters.inc("containers_attached")
        self._tell_watchers("track", lambda w: w.track(c.id, cgroups.get("", "")))
        self.run_attach_hooks(c)
        log.info(
            "attach",
            extra={"fields": {"container": c.id, "pid": st.pid, "fd": fd, "status": st.state.status,
                              "bundle": c.bundle, "init": True}},
        )
        t = threading.Thread(target=self._worker, args=(c,), name=f"worker-{cookie}", daemon=True)
        self._workers[c.id] = t
        t.start()
        if self._gate.is_set():
            self.handlers.attached(c, self.core)  # handlers' set-up off this thread
        else:
            self._held.append(c)

    def run_attach_hooks(self, c: Container) -> None:
        """Per-container set-up of optional parts (the emulated files); a failing hook
        is logged and counted, the container is attached anyway."""
        for fn in self.attach_hooks:
            try:
                fn(c)
            except Exception as e:
                self.counters.inc("handler_errors", "attach hook")
                log.warning("attach hook failed", extra={"fields": {
                    "container": c.id, "hook": getattr(fn, "__qualname__", "?"),
                    "error": repr(e)}})

    def _attach_fd(self, c: Container, fd: int, pid: int) -> None:
        try:
            self.engine.attach(c.channel, fd)
        except OSError as e:
            raise ListenerReject("attach failed", e.strerror or str(e)) from None
        c.notify_fds.append(fd)
        log.info(
            "attach",
            extra={"fields": {"container": c.id, "pid": pid, "fd": fd, "status": "running",
                              "init": False}},
        )

    # -- per-container worker ----------------------------------------------

    def _worker(self, c: Container) -> None:
        ch = c.channel
        detached_type = self.core.Detached
        tally = self.counters.local()
        decisions = tally.bucket("decisions")
        calls = self.calls.local()
        slot = self.shares.slot(c.cookie)
        self._gate.wait()
        try:
            while not self._frozen.is_set():
                stopping = self._stop.is_set()
                # No timeout: close() interrupts the wait (and a waiter in the
                # core's direct mode then needs no poll per call).
                items = ch.wait(0 if stopping else None)
                slot.begin()
                for item in items:
                    if isinstance(item, detached_type):
                        if self._detach(c, item.notify_fd):
                            return
                    else:
                        if slot.defer():
                            tally.inc("deferred")
                        self.handle(c, item, decisions, calls)
                pause = slot.end(stopping)
                if pause > 0:
                    tally.inc("throttled")
                    self._stop.wait(pause)
                if stopping or ch.closed:
                    return
        except Exception:
            self.counters.inc("worker_errors")
            log.exception("worker failed", extra={"fields": {"container": c.id}})
            with self.registry.lock:
                self.registry.remove(c.id)
            self._release(c, "worker failed")
        finally:
            slot.close()
            tally.release()
            calls.release()

    def _detach(self, c: Container, fd: int) -> bool:
        """Forget `fd`; returns True once the container has no fd left."""
        with self.registry.lock:
            if fd in c.notify_fds:
                c.notify_fds.remove(fd)
            last = not c.notify_fds
            if last:
                self.registry.remove(c.id)
        log.info("detach", extra={"fields": {"container": c.id, "fd": fd, "last": last}})
        if last:
            self._release(c, "exited")
        return last

    def _release(self, c: Container, why: str) -> None:
        with self._release_lock:
            if c.cookie in self._released:
                return
            self._released.add(c.cookie)
        self.shares.forget(c.cookie)
        c.channel.close()
        self.retired_stats.update(c.channel.stats())
        close_container_fds(c)
        self.handlers.released(c)
        self._tell_watchers("untrack", lambda w: w.untrack(c.id))
        self._workers.pop(c.id, None)
        self._retired.append((time.monotonic(), c.cookie))
        self.counters.inc("containers_detached")
        log.info("container removed", extra={"fields": {"container": c.id, "why": why,
                                                          "lifetime_s": round(time.time()
                                                                              - c.started_at, 3)}})

    def _tell_watchers(self, what: str, call: Callable[[Watcher], None]) -> None:
        for w in self.watchers:
            try:
                call(w)
            except Exception:  # an observer never costs a container its attach
                self.counters.inc("worker_errors", f"watcher {what}")
                log.exception("watcher failed", extra={"fields": {"call": what}})

    def _route(self, nr: int) -> tuple[str, Handler | None]:
        route = self._routes.get(nr)
        if route is None:
            name = self._syscall_name(nr)
            route = self._routes[nr] = (name, self.handlers.get(name))
        return route

    def handle(self, c: Container, n: Notification, decisions: dict[str, int],
               calls: LocalTally | None = None) -> None:
        # The hot path of every Python-path call: keep it lean, answer first,
        # then do the bookkeeping.
        t0 = time.perf_counter_ns()
        # While someone watches events, a new caller's comm is read before the answer:
        # a caller that exits right after its call (a refused umount) has none after.
        if self.bus.subscribers and n.pid not in c.comms:
            c.comm(n.pid, self._comm_of)
        if n.arch == self.native_arch:
            name, fn = self._route(n.nr)
            if fn is not None:
                verdict = self.handlers.call(fn, Request(c, n, name, n.args, self.core))
            else:
                verdict = UNHANDLED
        else:
            name = f"arch_{n.arch:#x}_{n.nr}"
            verdict = UNSUPPORTED_ARCH
        value = self._answer(c, n, verdict)
        kind = verdict.kind
        decisions[kind] = decisions.get(kind, 0) + 1
        if calls is not None:
            calls.histogram("python").observe_ns(time.perf_counter_ns() - t0)
            calls.count("python", name, kind)
        comm = c.comms.get(n.pid)
        if comm is None:
            comm = c.comm(n.pid, self._comm_of)
        if self.bus.subscribers:
            self.bus.publish(Event(
                time=time.time(), container=c.id, pid=n.pid, comm=comm,
                syscall=name, args=list(n.args), verdict=kind,
                errno=verdict.error, reason=verdict.reason, source="seccomp",
                value=value if kind in ("value", "fd") else None,
                details=verdict.details or None,
            ))

    def _answer(self, c: Container, n: Notification, v: Verdict) -> int:
        ch = c.channel
        kind = v.kind
        if kind == "value":
            ret = ch.answer(n, v.val, 0, 0)
        elif kind == "errno":
            ret = ch.answer(n, 0, v.error, 0)
        elif kind == "continue":
            ret = ch.answer(n, 0, 0, self.flag_continue)
        elif kind == "fd":
            try:
                return self._inject(ch, n, v)
            except Exception as e:
                self._respond_failed(c, n, e)
                return v.val
        else:
            self.counters.inc("handler_errors", "bad verdict")
            ret = ch.answer(n, 0, errno_mod.EPERM, 0)
        if ret < 0:
            e: Exception = (self._target_gone("respond") if ret == -errno_mod.ENOENT
                            else OSError(-ret, f"respond: {os.strerror(-ret)}"))
            self._respond_failed(c, n, e)
        return v.val

    def _inject(self, ch: Channel, n: Notification, v: Verdict) -> int:
        try:
            return int(ch.addfd(n, v.inject_fd, v.fd_flags, send=True))
        except Exception as e:
            if _gone(self.core, e):
                raise
            # ADDFD failed without answering: refuse instead, so the target never hangs.
            ch.respond(n, error=(e.errno if isinstance(e, OSError) else 0) or errno_mod.EPERM)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(v.inject_fd)

    def _respond_failed(self, c: Container, n: Notification, e: Exception) -> None:
        reason = "target gone" if _gone(self.core, e) else "send failed"
        self.counters.inc("respond_errors", reason)
        level = logging.DEBUG if reason == "target gone" else logging.WARNING
        log.log(level, "answer not delivered", extra={"fields": {
            "container": c.id, "pid": n.pid, "nr": n.nr, "reason": reason, "error": str(e)}})

    def _syscall_name(self, nr: int) -> str:
        try:
            return self._name_of(nr)
        except (KeyError, ValueError):
            return f"syscall_{nr}"

    # -- fast-path events ----------------------------------------------------

    def pump_once(self) -> int:
        n = self._pumper.publish(self.engine.drain_decisions())
        self._prune_cookies()
        return n

    def _prune_cookies(self) -> None:
        # Keep a removed container's name for late fast-path decisions a while.
        cutoff = time.monotonic() - 10.0
        while self._retired and self._retired[0][0] < cutoff:
            _, cookie = self._retired.popleft()
            self._cookie_ids.pop(cookie, None)
            self._containers_by_cookie.pop(cookie, None)
            self._released.discard(cookie)

    def _pump_loop(self) -> None:
        while not self._stop.wait(PUMP_INTERVAL):
            try:
                self.pump_once()
            except Exception:
                self.counters.inc("pump_errors")
                log.exception("decision pump failed")
        self.pump_once()

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        # Workers share one interpreter lock: see fairshare.py.
        self.shares.start()
        self._pump = threading.Thread(target=self._pump_loop, name="pump", daemon=True)
        self._pump.start()

    def close(self, wait: float = 3.0) -> None:
        """Answer what is queued, then close every channel so no target hangs."""
        self._stop.set()
        for c in self.registry.list():
            if c.channel is not None:
                c.channel.interrupt()
        deadline = time.monotonic() + wait
        for t in list(self._workers.values()):
            t.join(max(0.0, deadline - time.monotonic()))
        with self.registry.lock:
            remaining = self.registry.list()
            for c in remaining:
                self.registry.remove(c.id)
        for c in remaining:
            self._release(c, "shutdown")
        if self._pump is not None:
            self._pump.join(max(0.1, deadline - time.monotonic()))

    def hold(self) -> None:
        """While adopting, workers and attach hooks wait for release(): a worker serving
        its backlog at once took the interpreter from the next adoption (~50 ms each)."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()
        held, self._held = self._held, []
        for c in held:
            self.handlers.attached(c, self.core)

    def freeze(self, wait: float = 2.0) -> dict[str, int]:
        """A hand-over's last step: stop acting, close nothing (quiesce.py)."""
        self._frozen.set()
        return quiesce.stop_acting(self.registry.list(), list(self._workers.values()), wait)

    def dropped_decisions(self) -> int:
        return int(self.engine.dropped_decisions)


def _gone(core: Core, e: BaseException) -> bool:
    if isinstance(e, core.TargetGone):
        return True
    return isinstance(e, OSError) and e.errno == errno_mod.ENOENT
