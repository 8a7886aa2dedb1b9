"""The policy's namespace executors: one persistent helper per (container, user namespace,
mount namespace), cached and closed when the container goes away.

Bounded per container (MAX_PER_CONTAINER) and over all (MAX_EXECUTORS): a container that
loops `unshare -Um` + `mount` keeps replacing its own least recently used helpers and
never evicts another container's, unless the global bound is reached and that container
holds as many as the biggest; even then its newest helper is never the one evicted.

A vetted mount or umount needs only the caller's user and mount namespaces; for those the
persistent `core.Executor` answers in tens of microseconds instead of a fork + setns per
call. Operations needing another namespace (procfs in a pid namespace, sysfs in a network
one, mqueue, cgroup) keep using the one-shot `req.exec` (core.ns_exec).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING

from interceptd.kernel import zygote
from interceptd.kernel.consts import NS_MOUNT
from interceptd.kernel.pidfd import thread_pidfd

if TYPE_CHECKING:
    from interceptd.seams import Container, Core, ExecResult, Executor, Request

log = logging.getLogger("interceptd.policy")


MAX_EXECUTORS = 64  # helpers alive at once, over all containers
MAX_PER_CONTAINER = 4  # helpers alive at once for one container
# Daemon forks (a helper started, a one-shot ns_exec) per container: FORK_BURST at once,
# then FORK_RATE per second. A fork costs every daemon thread, not just the forking one:
# after it, each page any thread writes is copied on first touch. A container that keeps
# forking (`unshare -Um` + `mount` in a loop) waits for its own tokens, in its own worker
# thread, so it slows itself down and not its neighbours.
FORK_BURST = 8
FORK_RATE = 2.0

_Key = tuple[int, int, int, int, int]  # (container, userns dev, ino, mntns dev, ino)
_cache: OrderedDict[_Key, Executor] = OrderedDict()
_watched: set[int] = set()  # containers with a finalizer closing their executors
_recent: dict[int, Executor] = {}  # container -> the executor it used last
_lock = threading.Lock()


def _ns(pid: int, name: str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/{name}")
    return (st.st_dev, st.st_ino)


def run(req: Request, namespaces: int, op: str, *args: object) -> ExecResult:
    """`op` performed as `req`'s caller would (its namespaces, root and cwd): the core's
    ExecResult. The pidfd is opened before the notification is checked, so it names the
    process that made the call, not one that reused its pid."""
    core = req.core
    if namespaces & ~NS_MOUNT:
        _charge(req.container)
        return req.exec(namespaces, op, *args)
    pid = req.pid
    pidfd = thread_pidfd(pid)
    try:
        if not req.valid():
            raise core.TargetGone("notification no longer valid")
        cid = id(req.container)
        x = _recent.get(cid)
        if x is not None:
            # The container's last executor; the core checks that the caller is in its
            # namespaces (WrongNamespaces otherwise, with nothing done).
            try:
                return x.run(pidfd, pid, op, *args)
            except core.WrongNamespaces:
                pass
            except core.ExecutorDied as e:
                _drop(x)
                if e.errno == errno.ECONNABORTED:  # it may have acted: no second try
                    raise
        try:
            key = (cid, *_ns(pid, "user"), *_ns(pid, "mnt"))
        except FileNotFoundError:
            raise core.TargetGone("target gone") from None
        x = _get(req.container, key, pidfd, pid, core)
        if x is not None:
            _recent[cid] = x
            try:
                return x.run(pidfd, pid, op, *args)
            except core.WrongNamespaces:
                pass  # it moved again meanwhile
            except core.ExecutorDied as e:
                _drop(x)
                if e.errno == errno.ECONNABORTED:
                    raise
        _charge(req.container)
        return core.ns_exec(pidfd, pid, namespaces, op, *args)
    finally:
        os.close(pidfd)


def _get(container: Container, key: _Key, pidfd: int, pid: int,
         core: Core) -> Executor | None:
    with _lock:
        x = _cache.get(key)
        if x is not None:
            _cache.move_to_end(key)
            return x
    _charge(container)
    try:
        x = _new_executor(core, pidfd, pid)
    except OSError as e:
        log.warning("namespace executor not started: %s", e)
        return None
    if (*x.user_ns, *x.mnt_ns) != key[1:]:
        x.close()  # the caller changed namespaces meanwhile
        return None
    evicted = []
    with _lock:
        old = _cache.get(key)
        if old is not None:  # another thread started one first
            evicted.append(x)
            x = old
        else:
            _cache[key] = x
        _cache.move_to_end(key)
        evicted.extend(_evict(key))
        for k, v in list(_recent.items()):
            if any(v is e for e in evicted):
                del _recent[k]
        cid = key[0]
        watch = cid not in _watched
        _watched.add(cid)
    if watch:
        weakref.finalize(container, _container_gone, cid)
    for e in evicted:
        e.close()
    return x


_forks: dict[int, tuple[float, float]] = {}  # container -> (tokens, when counted)


_zygote: zygote.Zygote | None = None
_zygote_lock = threading.Lock()


def _new_executor(core: Core, pidfd: int, pid: int) -> Executor:
    """A core.Executor, forked by the zygote when this core has one (see zygote.py), else
    by the daemon itself."""
    global _zygote
    parts = core.ZYGOTE_PARTS
    if parts is None:
        return core.Executor(pidfd, pid, NS_MOUNT)
    with _zygote_lock:
        if _zygote is None or _zygote.parts is not parts:
            try:
                _zygote = zygote.Zygote(parts)
            except OSError as e:
                log.warning("executor zygote not started: %s", e)
                return core.Executor(pidfd, pid, NS_MOUNT)
        z = _zygote
    try:
        return parts.executor(z.start, pidfd, pid, NS_MOUNT)
    except zygote.ZygoteGone as e:
        log.warning("executor zygote lost (%s): starting a new one", e)
        with _zygote_lock:
            if _zygote is z:
                _zygote = None
        z.close()
        return core.Executor(pidfd, pid, NS_MOUNT)


def _charge(container: Container) -> None:
    """Take a fork token of `container` (a helper started, or a one-shot ns_exec), waiting
    for one if it has none left."""
    cid = id(container)
    with _lock:
        now = time.monotonic()
        tokens, t = _forks.get(cid, (float(FORK_BURST), now))
        tokens = min(float(FORK_BURST), tokens + (now - t) * FORK_RATE) - 1.0
        _forks[cid] = (tokens, now)
    if tokens < 0:
        time.sleep(-tokens / FORK_RATE)


def _evict(new: _Key) -> list[Executor]:
    """Under _lock: take out what exceeds the bounds after `new` went in (LRU order)."""
    out = []
    cid = new[0]
    own = [k for k in _cache if k[0] == cid]
    while len(own) > MAX_PER_CONTAINER:
        out.append(_cache.pop(own.pop(0)))
    while len(_cache) > MAX_EXECUTORS:
        counts: dict[int, int] = {}
        for k in _cache:
            counts[k[0]] = counts.get(k[0], 0) + 1
        most = max(counts.values())
        if counts[cid] == most and counts[cid] > 1:
            victim = next(k for k in _cache if k[0] == cid)  # its own, never `new`
        else:
            victim = next(k for k in _cache if counts[k[0]] == most and k != new)
        out.append(_cache.pop(victim))
    return out


def per_container() -> dict[int, int]:
    """Live helpers by container id()."""
    with _lock:
        counts: dict[int, int] = {}
        for k in _cache:
            counts[k[0]] = counts.get(k[0], 0) + 1
        return counts


def _drop(x: Executor) -> None:
    with _lock:
        for k, v in list(_cache.items()):
            if v is x:
                del _cache[k]
        for k, v in list(_recent.items()):
            if v is x:
                del _recent[k]
    x.close()


def _container_gone(cid: int) -> None:
    # A finalizer runs wherever the collector happens to run, also inside a section of
    # this very thread that holds _lock (not reentrant): never take the lock here.
    with contextlib.suppress(RuntimeError):  # at interpreter shutdown close_all() covers it
        threading.Thread(target=close_container, args=(cid,), name="executor-close",
                         daemon=True).start()


def close_container(cid: int) -> None:
    """Close every executor of the container whose id() is `cid` (it detached); the
    zygote too once no executor is left (the daemon keeps no idle child)."""
    global _zygote
    with _lock:
        keys = [k for k in _cache if k[0] == cid]
        gone = [_cache.pop(k) for k in keys]
        _watched.discard(cid)
        _recent.pop(cid, None)
        _forks.pop(cid, None)
        idle = not _cache
    for x in gone:
        x.close()
    if idle:
        with _zygote_lock:
            z, _zygote = _zygote, None
        if z is not None:
            z.close()


def close_all() -> None:
    global _zygote
    with _lock:
        gone = list(_cache.values())
        _cache.clear()
        _recent.clear()
        _forks.clear()
    for x in gone:
        x.close()
    with _zygote_lock:
        z, _zygote = _zygote, None
    if z is not None:
        z.close()


def live() -> int:
    with _lock:
        return len(_cache)
