"""Containers' notify fds → channels of the C engine → per-container Python workers.

Each container gets one channel (its verdict table, its queue for the Python
path) and one worker thread blocked in `Channel.wait()`, so a slow handler in
one container never delays another's. Fast-path decisions are drained from the
engine by a pump thread and published as events like the Python path's.
"""

from __future__ import annotations

import collections
import contextlib
import errno as errno_mod
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from interceptd.events import Counters, Event, EventBus
from interceptd.handlers import Handler, HandlerRegistry, Request
from interceptd.listener import ListenerReject, ProcessState
from interceptd.registry import (
    Container,
    Registry,
    close_container_fds,
    read_cgroup_paths,
    read_id_maps,
)
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

AUDIT_ARCH_X86_64 = 0xC000003E
UNHANDLED = Verdict.errno(errno_mod.EPERM, "unhandled")
UNSUPPORTED_ARCH = Verdict.errno(errno_mod.EPERM, "unsupported arch")
PUMP_INTERVAL = 0.075
# One container's calls may keep the daemon busy SHARE of the time (seconds of handling
# per second), after a burst of BURST seconds: a container hammering vetted calls
# (process_vm_readv, mount loops) then waits for its own share instead of taking the CPU
# and the interpreter from every other container.
# The share applies only while another container is active (its calls handled within
# ACTIVE_WINDOW): alone, a container has the whole daemon.
SHARE = 0.25
BURST = 0.05
ACTIVE_WINDOW = 0.5
MAX_PAUSE = 0.1
OVER_SHARE_NICE = 10  # a worker over its share runs at this nice value until back in it
SWITCH_INTERVAL = 0.0005  # seconds a worker may keep the interpreter lock if another waits
# How long an exec'd process's message waits for its container's init message:
# crun's `start` can return (and a `docker exec` follow) before the daemon has
# registered the container, and a refused fd fails the process's calls (ENOSYS).
EXEC_WAIT = 2.0


class Budget:
    """A container's share of the daemon's time: a token bucket of seconds of handling,
    refilled at `share` seconds per second, holding at most `burst`. `charge(spent)` takes
    what a batch of calls cost and answers how long the container's worker must pause
    before it handles the next (0 while within its share)."""

    def __init__(self, share: float, burst: float) -> None:
        self.share, self.burst = share, burst
        self.tokens = burst
        self.t = time.monotonic()

    def forgive(self) -> None:
        self.tokens = max(self.tokens, 0.0)

    def charge(self, spent: float) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.share) - spent
        self.t = now
        return -self.tokens / self.share if self.tokens < 0 else 0.0


def _nice(value: int) -> bool:
    """Set the calling thread's nice value (Linux: per thread); True if it was set."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)
        return True
    except OSError:
        return False


def read_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""


class Dispatcher:
    def __init__(
        self,
        core: Any,
        engine: Any,
        registry: Registry,
        handlers: HandlerRegistry,
        table: list[TableEntry],
        bus: EventBus,
        counters: Counters,
        *,
        name_of: Callable[[int], str],
        native_arch: int = AUDIT_ARCH_X86_64,
        comm_of: Callable[[int], str] = read_comm,
    ) -> None:
        self.core = core
        self.engine = engine
        self.registry = registry
        self.handlers = handlers
        self.table = table
        self.bus = bus
        self.counters = counters
        self._name_of = name_of
        self._native_arch = native_arch
        self._comm_of = comm_of
        self._actions = {
            FAST_CONTINUE: core.ACT_CONTINUE,
            FAST_ERRNO: core.ACT_ERRNO,
            FAST_VALUE: core.ACT_VALUE,
            FAST_PYTHON: core.ACT_PYTHON,
        }
        self._verdict_of_action = {
            core.ACT_CONTINUE: "continue",
            core.ACT_ERRNO: "errno",
            core.ACT_VALUE: "value",
        }
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
        self._pump: threading.Thread | None = None
        self.exec_wait = EXEC_WAIT
        self.share, self.burst = SHARE, BURST
        self._active: dict[int, float] = {}  # cookie -> when its worker last handled calls
        self._flag_continue = getattr(core, "FLAG_CONTINUE", 1)
        gone = getattr(core, "TargetGone", None)
        self._target_gone = gone if isinstance(gone, type) else OSError
        self._registered = threading.Condition(registry.lock)  # a container was added
        # For the metrics exporter (read at scrape time): calls by path, syscall
        # and verdict, and the channel counts of containers already gone.
        self.calls = CallTally()
        self.retired_stats: collections.Counter[str] = collections.Counter()
        self._pump_tally = self.calls.local()
        # Told of each container's attach and release (the eBPF layer): objects with
        # track(container_id, cgroup_v2_path) and untrack(container_id).
        self.watchers: list[Any] = []

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
            if not _same_container(c, st):
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
        self._tell_watchers("track", c.id, cgroups.get("", ""))
        self.run_attach_hooks(c)
        log.info(
            "attach",
            extra={"fields": {"container": c.id, "pid": st.pid, "fd": fd, "status": st.state.status,
                              "bundle": c.bundle, "init": True}},
        )
        t = threading.Thread(target=self._worker, args=(c,), name=f"worker-{cookie}", daemon=True)
        self._workers[c.id] = t
        t.start()

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
        budget = Budget(self.share, self.burst)
        niced = False
        try:
            while True:
                stopping = self._stop.is_set()
                # No timeout: close() interrupts the wait (and a waiter in the
                # core's direct mode then needs no poll per call).
                items = ch.wait(0 if stopping else None)
                t0 = time.monotonic()
                for item in items:
                    if isinstance(item, detached_type):
                        if self._detach(c, item.notify_fd):
                            return
                    else:
                        self._handle(c, item, decisions, calls)
                now = time.monotonic()
                self._active[c.cookie] = now
                pause = budget.charge(now - t0)
                if pause > 0 and not stopping:
                    if self._contended(c.cookie, now):
                        # Over its share while others use the daemon too: its own callers
                        # wait (their calls queue in the kernel and in its channel), and
                        # its worker yields the CPU to theirs until it is back in budget.
                        tally.inc("throttled")
                        niced = niced or _nice(OVER_SHARE_NICE)
                        self._stop.wait(min(pause, MAX_PAUSE))
                    else:
                        budget.forgive()  # alone: the daemon's time is all its own
                elif niced and budget.tokens >= budget.burst / 2:
                    niced = not _nice(0)
                if stopping or ch.closed:
                    return
        except Exception:
            self.counters.inc("worker_errors")
            log.exception("worker failed", extra={"fields": {"container": c.id}})
            with self.registry.lock:
                self.registry.remove(c.id)
            self._release(c, "worker failed")
        finally:
            tally.release()
            calls.release()

    def _contended(self, cookie: int, now: float) -> bool:
        """Whether another container's calls were handled within the last ACTIVE_WINDOW."""
        since = now - ACTIVE_WINDOW
        return any(t > since for k, t in list(self._active.items()) if k != cookie)

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
        self._active.pop(c.cookie, None)
        c.channel.close()
        with contextlib.suppress(Exception):  # a test double may have no stats
            self.retired_stats.update(c.channel.stats())
        close_container_fds(c)
        self.handlers.released(c)
        self._tell_watchers("untrack", c.id)
        self._workers.pop(c.id, None)
        self._retired.append((time.monotonic(), c.cookie))
        self.counters.inc("containers_detached")
        log.info("container removed", extra={"fields": {"container": c.id, "why": why,
                                                          "lifetime_s": round(time.time()
                                                                              - c.started_at, 3)}})

    def _tell_watchers(self, what: str, *args: Any) -> None:
        for w in self.watchers:
            try:
                getattr(w, what)(*args)
            except Exception:  # an observer never costs a container its attach
                self.counters.inc("worker_errors", f"watcher {what}")
                log.exception("watcher failed", extra={"fields": {"call": what}})

    def _route(self, nr: int) -> tuple[str, Handler | None]:
        route = self._routes.get(nr)
        if route is None:
            name = self._syscall_name(nr)
            route = self._routes[nr] = (name, self.handlers.get(name))
        return route

    def _handle(self, c: Container, n: Any, decisions: dict[str, int],
                calls: LocalTally | None = None) -> None:
        # The hot path of every Python-path call: keep it lean, answer first,
        # then do the bookkeeping.
        t0 = time.perf_counter_ns()
        if n.arch == self._native_arch:
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

    def _answer(self, c: Container, n: Any, v: Verdict) -> int:
        ch = c.channel
        kind = v.kind
        if kind == "value":
            ret = ch.answer(n, v.val, 0, 0)
        elif kind == "errno":
            ret = ch.answer(n, 0, v.error, 0)
        elif kind == "continue":
            ret = ch.answer(n, 0, 0, self._flag_continue)
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

    def _inject(self, ch: Any, n: Any, v: Verdict) -> int:
        try:
            return int(ch.addfd(n, v.inject_fd, v.fd_flags, send=True))
        except Exception as e:
            if _gone(self.core, e):
                raise
            # ADDFD failed without answering: refuse instead, so the target never hangs.
            ch.respond(n, error=getattr(e, "errno", None) or errno_mod.EPERM)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(v.inject_fd)

    def _respond_failed(self, c: Container, n: Any, e: Exception) -> None:
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
        decisions = self.engine.drain_decisions()
        if not decisions:
            self._prune_cookies()
            return 0
        publish = self.bus.subscribers > 0
        tally: collections.Counter[str] = collections.Counter()
        gone = 0
        calls = self._pump_tally
        for d in decisions:
            verdict = self._verdict_of_action.get(d.action, "errno")
            tally[verdict] += 1
            # The native helper's records say why; the daemon's fast path's do not.
            calls.count("native" if getattr(d, "reason", "") else "fast",
                        self._syscall_name(d.nr), verdict)
            if getattr(d, "send_errno", 0):
                gone += 1
            # Every new pid's comm is cached on its container, events or not, so
            # later events still name a caller that has exited meanwhile.
            c = self._containers_by_cookie.get(d.cookie)
            if c is not None:
                comm = c.comms.get(d.pid)
                if comm is None and getattr(d, "comm", ""):
                    # read by the core right after answering: the caller may be gone now
                    comm = c.comm(d.pid, lambda _pid, name=d.comm: name)
                if comm is None:
                    comm = c.comm(d.pid, self._comm_of)
            else:
                comm = ""
            if not publish:
                continue
            reason = getattr(d, "reason", "")  # the native path says why
            if not reason:
                reason = "rule" if self._rule_nrs.get(d.nr) is not None else "unhandled"
            self.bus.publish(Event(
                time=d.ns_time / 1e9 if d.ns_time else time.time(),
                container=self._cookie_ids.get(d.cookie, f"cookie:{d.cookie}"),
                pid=d.pid, comm=comm or self._comm_of(d.pid), syscall=self._syscall_name(d.nr),
                args=list(getattr(d, "args", ())),
                verdict=verdict, errno=int(d.value) if verdict == "errno" else 0,
                reason=reason, source="seccomp",
                value=int(d.value) if verdict == "value" else None,
            ))
        for verdict, n in tally.items():
            self.counters.inc("decisions", verdict, n)
        if gone:
            self.counters.inc("respond_errors", "target gone", gone)
        self._prune_cookies()
        return len(decisions)

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
        # Workers share one interpreter lock. A busy container's worker gives it up for
        # its syscalls but takes it straight back, so another container's worker, woken
        # by a notification, gets it only when the holder is forced to switch: after the
        # switch interval (5 ms by default), the p99 of every quiet container's calls.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._pump = threading.Thread(target=self._pump_loop, name="pump", daemon=True)
        self._pump.start()

    def close(self, wait: float = 3.0) -> None:
        """Answer what is queued, then close every channel so no target hangs."""
        self._stop.set()
        for c in self.registry.list():
            interrupt = getattr(c.channel, "interrupt", None)
            if interrupt is not None:
                interrupt()
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

    def dropped_decisions(self) -> int:
        return int(getattr(self.engine, "dropped_decisions", 0))


def _same_container(c: Container, st: ProcessState) -> bool:
    """Whether a message for a registered id comes from that very container.

    A second init message for a live id is another container reusing the id.
    Exec messages are checked on what they carry: crun sends pid 0 and bundle
    "." for them, runc the real init pid and bundle.
    """
    if st.is_init:
        return False
    if st.state.pid and st.state.pid != c.init_pid:
        return False
    return st.state.bundle in ("", ".") or st.state.bundle == c.bundle


def _gone(core: Any, e: BaseException) -> bool:
    gone = getattr(core, "TargetGone", None)
    if isinstance(gone, type) and isinstance(e, gone):
        return True
    return isinstance(e, OSError) and e.errno == errno_mod.ENOENT
