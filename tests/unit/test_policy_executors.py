"""The policy's executor cache (interceptd.kernel.executors) with a stand-in core: one
executor per (container, user ns, mount ns), reused, LRU-bounded, closed on detach, and
the one-shot ns_exec where a persistent one cannot serve."""

from __future__ import annotations

import errno
import gc
import os
import time
from typing import Any

import pytest

from interceptd.kernel import executors


class TargetGone(OSError):
    pass


class ExecutorDied(OSError):
    pass


class WrongNamespaces(OSError):
    pass


class FakeCore:
    TargetGone = TargetGone
    ExecutorDied = ExecutorDied
    WrongNamespaces = WrongNamespaces
    ZYGOTE_PARTS = None

    def __init__(self) -> None:
        self.started: list[FakeExecutor] = []
        self.oneshot: list[tuple[Any, ...]] = []
        self.ns = (1, 100, 1, 200)  # what a new helper reports it entered
        self.next_run_error: Exception | None = None

    def Executor(self, pidfd: int, pid: int, namespaces: int) -> FakeExecutor:
        x = FakeExecutor(self)
        self.started.append(x)
        return x

    def ns_exec(self, pidfd: int, pid: int, ns: int, op: str, *args: Any) -> str:
        self.oneshot.append((op, *args))
        return "oneshot"


class FakeExecutor:
    def __init__(self, core: FakeCore) -> None:
        self.core = core
        self.user_ns, self.mnt_ns = core.ns[:2], core.ns[2:]
        self.closed = False
        self.calls: list[tuple[Any, ...]] = []

    def run(self, pidfd: int, pid: int, op: str, *args: Any) -> str:
        if self.closed:
            raise ExecutorDied(errno.EBADF, "closed")
        if (self.user_ns, self.mnt_ns) != (self.core.ns[:2], self.core.ns[2:]):
            raise WrongNamespaces(errno.EXDEV, "the caller stands elsewhere")
        err, self.core.next_run_error = self.core.next_run_error, None
        if err is not None:
            raise err
        self.calls.append((op, *args))
        return "persistent"

    def close(self) -> None:
        self.closed = True


class Container:
    def __init__(self, cid: str) -> None:
        self.id = cid
        self.policy = None


class Req:
    def __init__(self, container: Container, core: FakeCore, valid: bool = True) -> None:
        self.container, self.core, self.pid, self._valid = container, core, os.getpid(), valid
        self.exec_calls: list[tuple[Any, ...]] = []

    def valid(self) -> bool:
        return self._valid

    def exec(self, ns: int, op: str, *args: Any) -> str:
        self.exec_calls.append((ns, op, *args))
        return "req.exec"


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Any:
    executors.close_all()
    monkeypatch.setattr(executors, "FORK_BURST", 1 << 20)  # tested on its own below
    # Every process here is "in" the namespaces the fake helpers report.
    monkeypatch.setattr(executors, "_ns", lambda pid, name: (1, 100) if name == "user"
                        else (1, 200))
    yield
    executors.close_all()


def test_one_executor_per_container_reused() -> None:
    core = FakeCore()
    c = Container("a")
    for _ in range(5):
        assert executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0) \
            == "persistent"
    assert len(core.started) == 1 and len(core.started[0].calls) == 5
    d = Container("b")
    executors.run(Req(d, core), executors.NS_MOUNT, "umount2", "/x", 0)
    assert len(core.started) == 2 and executors.live() == 2


def test_other_namespaces_use_the_one_shot_executor() -> None:
    core = FakeCore()
    req = Req(Container("a"), core)
    assert executors.run(req, executors.NS_MOUNT | 0x20000000, "mount", "proc") == "req.exec"
    assert core.started == [] and len(req.exec_calls) == 1


def test_invalid_notification_is_target_gone() -> None:
    core = FakeCore()
    with pytest.raises(TargetGone):
        executors.run(Req(Container("a"), core, valid=False), executors.NS_MOUNT,
                      "umount2", "/x", 0)
    assert core.started == []


def test_wrong_namespaces_pick_another_executor() -> None:
    core = FakeCore()
    c = Container("a")
    executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    core.next_run_error = WrongNamespaces(errno.EXDEV, "moved")
    assert executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0) \
        == "persistent"
    # The key is the same (the fake _ns), so the cached one served the retry.
    assert len(core.started) == 1


def test_a_helper_that_reports_other_namespaces_is_not_used() -> None:
    core = FakeCore()
    core.ns = (1, 101, 1, 200)  # the caller moved between our look and its start
    assert executors.run(Req(Container("a"), core), executors.NS_MOUNT, "umount2", "/x",
                         0) == "oneshot"
    assert core.started[0].closed and executors.live() == 0


def test_dead_executor_falls_back_unless_it_may_have_acted() -> None:
    core = FakeCore()
    c = Container("a")
    executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    core.next_run_error = ExecutorDied(errno.EPIPE, "dead")
    # Dropped, then a new one is started for the same key and serves the call.
    assert executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0) \
        == "persistent"
    assert core.started[0].closed and len(core.started) == 2
    core.next_run_error = ExecutorDied(errno.ECONNABORTED, "died mid-request")
    with pytest.raises(ExecutorDied):
        executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    assert core.started[1].closed


def test_lru_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executors, "MAX_EXECUTORS", 3)
    core = FakeCore()
    cs = [Container(str(i)) for i in range(5)]
    for c in cs:
        executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    assert executors.live() == 3
    assert [x.closed for x in core.started] == [True, True, False, False, False]
    # An evicted container gets a fresh one.
    assert executors.run(Req(cs[0], core), executors.NS_MOUNT, "umount2", "/x", 0) \
        == "persistent"
    assert len(core.started) == 6


def test_closed_when_the_container_goes_away() -> None:
    core = FakeCore()
    c = Container("a")
    executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    x = core.started[0]
    del c
    gc.collect()
    deadline = time.monotonic() + 5  # closed by a short-lived thread, off the collector
    while not (x.closed and executors.live() == 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert x.closed and executors.live() == 0


def test_container_collected_while_the_cache_lock_is_held_does_not_deadlock() -> None:
    # The finalizer can fire inside any allocation, also in a section holding the lock.
    core = FakeCore()
    c = Container("b")
    executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    x = core.started[-1]
    del c
    with executors._lock:
        gc.collect()  # would deadlock if the finalizer took the lock itself
    deadline = time.monotonic() + 5
    while not x.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert x.closed


def test_policy_register_closes_executors_on_release() -> None:
    from interceptd.handlers import HandlerRegistry, table

    handlers = HandlerRegistry()
    table.register(handlers, None)
    core = FakeCore()
    c = Container("r")
    executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    x = core.started[-1]
    handlers.released(c)  # what the dispatcher does at the last detach
    assert x.closed


def _in_mntns(monkeypatch: pytest.MonkeyPatch, core: FakeCore, ino: int) -> None:
    """Callers from now on stand in mount namespace `ino` (what `unshare -m` does)."""
    core.ns = (1, 100, 1, ino)
    monkeypatch.setattr(executors, "_ns", lambda pid, name: (1, 100) if name == "user"
                        else (1, ino))


def test_an_unshare_loop_evicts_only_its_own_executors(monkeypatch: pytest.MonkeyPatch) -> None:
    core = FakeCore()
    quiet = [Container(f"q{i}") for i in range(3)]
    for c in quiet:
        executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    mine = core.started[:]
    noisy = Container("noisy")
    for ino in range(1000, 1040):  # 40 new mount namespaces, one mount each
        _in_mntns(monkeypatch, core, ino)
        executors.run(Req(noisy, core), executors.NS_MOUNT, "mount", "t", "/m", "tmpfs", 0)
    assert not any(x.closed for x in mine)
    counts = executors.per_container()
    assert counts[id(noisy)] == executors.MAX_PER_CONTAINER
    assert all(counts[id(c)] == 1 for c in quiet)
    assert executors.live() == len(quiet) + executors.MAX_PER_CONTAINER
    # The quiet containers' helpers still serve them: nothing new was started for them.
    _in_mntns(monkeypatch, core, 200)
    n = len(core.started)
    for c in quiet:
        executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    assert len(core.started) == n


def test_global_bound_takes_from_the_biggest_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executors, "MAX_EXECUTORS", 6)
    core = FakeCore()
    quiet = [Container(f"q{i}") for i in range(2)]
    for c in quiet:
        executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    noisy = [Container("n1"), Container("n2")]
    ino = 1000
    for _ in range(10):
        for c in noisy:
            ino += 1
            _in_mntns(monkeypatch, core, ino)
            executors.run(Req(c, core), executors.NS_MOUNT, "umount2", "/x", 0)
    counts = executors.per_container()
    assert executors.live() == 6
    assert counts[id(quiet[0])] == 1 and counts[id(quiet[1])] == 1
    assert counts[id(noisy[0])] == 2 and counts[id(noisy[1])] == 2
    assert not core.started[0].closed and not core.started[1].closed


def test_a_container_that_keeps_forking_waits_for_its_own_tokens(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executors, "FORK_BURST", 3)
    monkeypatch.setattr(executors, "FORK_RATE", 10.0)
    slept: list[float] = []
    monkeypatch.setattr(executors.time, "sleep", slept.append)
    core = FakeCore()
    noisy, quiet = Container("noisy"), Container("quiet")
    for ino in range(1000, 1006):  # six helpers started back to back
        _in_mntns(monkeypatch, core, ino)
        executors.run(Req(noisy, core), executors.NS_MOUNT, "umount2", "/x", 0)
    assert len(slept) == 3 and all(0.05 < s <= 0.31 for s in slept), slept
    executors.run(Req(quiet, core), executors.NS_MOUNT, "umount2", "/x", 0)
    assert len(slept) == 3  # the neighbour's tokens are its own
