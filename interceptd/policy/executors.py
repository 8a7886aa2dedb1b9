"""The policy's namespace executors: one persistent helper per (container, user namespace,
mount namespace), cached (LRU-bounded) and closed when the container goes away.

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
import weakref
from collections import OrderedDict
from typing import Any

from interceptd.handlers import thread_pidfd

log = logging.getLogger("interceptd.policy")

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
NS_MOUNT = CLONE_NEWUSER | CLONE_NEWNS

MAX_EXECUTORS = 64  # helpers alive at once, over all containers

_Key = tuple[int, int, int, int, int]  # (container, userns dev, ino, mntns dev, ino)
_cache: OrderedDict[_Key, Any] = OrderedDict()
_watched: set[int] = set()  # containers with a finalizer closing their executors
_recent: dict[int, Any] = {}  # container -> the executor it used last
_lock = threading.Lock()


def _ns(pid: int, name: str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/{name}")
    return (st.st_dev, st.st_ino)


def run(req: Any, namespaces: int, op: str, *args: Any) -> Any:
    """`op` performed as `req`'s caller would (its namespaces, root and cwd): the core's
    ExecResult. The pidfd is opened before the notification is checked, so it names the
    process that made the call, not one that reused its pid."""
    core = req.core
    if namespaces & ~NS_MOUNT or not hasattr(core, "Executor"):
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
        return core.ns_exec(pidfd, pid, namespaces, op, *args)
    finally:
        os.close(pidfd)


def _get(container: Any, key: _Key, pidfd: int, pid: int, core: Any) -> Any:
    with _lock:
        x = _cache.get(key)
        if x is not None:
            _cache.move_to_end(key)
            return x
    try:
        x = core.Executor(pidfd, pid, NS_MOUNT)
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
        while len(_cache) > MAX_EXECUTORS:
            evicted.append(_cache.popitem(last=False)[1])
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


def _drop(x: Any) -> None:
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
    """Close every executor of the container whose id() is `cid` (it detached)."""
    with _lock:
        keys = [k for k in _cache if k[0] == cid]
        gone = [_cache.pop(k) for k in keys]
        _watched.discard(cid)
        _recent.pop(cid, None)
    for x in gone:
        x.close()


def close_all() -> None:
    with _lock:
        gone = list(_cache.values())
        _cache.clear()
        _recent.clear()
    for x in gone:
        x.close()


def live() -> int:
    with _lock:
        return len(_cache)
