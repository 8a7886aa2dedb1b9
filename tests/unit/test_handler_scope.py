"""The one call scope of the mount family (handlers/scope.py) with the unit fakes: a kernel
error of a performed operation is answered once, with the decision's reason; the daemon's
fds are closed and the container's lock released whatever happens; the container's
PolicyStore lives on its record and goes on release."""

from __future__ import annotations

import errno
import os

import fakecore
import pytest

from interceptd.handlers import Request, mount, scope
from interceptd.kernel import executors
from interceptd.kernel.mountinfo import MountEntry
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.decision import Decision, ExecOp, perform
from interceptd.policy.fdmounts import FdMount
from interceptd.policystore import ContainerPolicy
from interceptd.registry import Container
from interceptd.syscalls import nr
from interceptd.verdict import Verdict

ENTRY = MountEntry(40, 20, "0:50", "/", "/mnt/x", "rw", (), "tmpfs", "tmpfs", "rw")


@pytest.fixture
def req() -> Request:
    scope.configure(None)  # nothing persisted
    c = Container("scope-1", "", {}, os.getpid(), -1)
    return Request(c, fakecore.Notification(1, os.getpid(), nr("umount2")), "umount2",
                   [0] * 6, fakecore)


def _answer(monkeypatch: pytest.MonkeyPatch, err: int) -> list[tuple[str, tuple[object, ...]]]:
    calls: list[tuple[str, tuple[object, ...]]] = []

    def run(req: Request, ns: int, op: str, *args: object) -> fakecore.ExecResult:
        calls.append((op, args))
        return fakecore.ExecResult(-1 if err else 0, err)

    monkeypatch.setattr(executors, "run", run)
    return calls


def test_a_kernel_error_is_answered_once_and_the_fds_closed(
        req: Request, monkeypatch: pytest.MonkeyPatch) -> None:
    _answer(monkeypatch, errno.EBUSY)
    held: list[int] = []

    def body(r: Request, st: ContainerPolicy, fds: scope.Fds) -> Verdict:
        held.append(fds.add(os.open("/", os.O_PATH | os.O_CLOEXEC)))
        d = perform("tmpfs allowed", ExecOp("mount", ()), target="/mnt/x")
        scope.run_ops(r, d, scope.NS_MOUNT)
        raise AssertionError("run_ops returned after a kernel error")

    v = scope.locked(req, body)
    assert v == Verdict.errno(errno.EBUSY, "tmpfs allowed [target=/mnt/x]; mount: EBUSY")
    with pytest.raises(OSError):
        os.fstat(held[0])
    assert not scope.state_of(req.container).lock.locked()


def test_the_lock_is_released_on_any_exception(req: Request) -> None:
    def body(r: Request, st: ContainerPolicy, fds: scope.Fds) -> Verdict:
        assert st.lock.locked()
        raise ProcessLookupError(r.pid)

    with pytest.raises(ProcessLookupError):
        scope.locked(req, body)
    assert not scope.state_of(req.container).lock.locked()


def _umount_checked(monkeypatch: pytest.MonkeyPatch, err: int) -> Verdict:
    table = MountTable([ENTRY])
    monkeypatch.setattr(mount.resolve, "resolve",
                        lambda *a, **k: (0, -1, FdMount(ENTRY, ENTRY.dev, table)))
    monkeypatch.setattr(mount, "decide_umount", lambda call, ctx: Decision(
        "perform", "own mount", ops=(ExecOp("umount2", ("/mnt/x", 0)),)))
    calls = _answer(monkeypatch, err)
    c = Container("scope-2", "", {}, os.getpid(), -1)
    r = Request(c, fakecore.Notification(1, os.getpid(), nr("umount2")), "umount2",
                [0] * 6, fakecore)
    v = scope.locked(r, mount._umount2_locked, "/mnt/x", 0)
    assert calls == [("umount2_checked", ("/mnt/x", 0, ENTRY.mount_id))]
    return v


def test_umount2_of_a_path_that_changed_is_ebusy(monkeypatch: pytest.MonkeyPatch) -> None:
    scope.configure(None)
    v = _umount_checked(monkeypatch, errno.ESTALE)
    assert v.kind == "errno" and v.error == errno.EBUSY
    assert "the path changed between check and umount" in v.reason


def test_umount2_kernel_errors_carry_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    scope.configure(None)
    assert _umount_checked(monkeypatch, errno.EINVAL) == Verdict.errno(
        errno.EINVAL, "own mount; umount2: EINVAL")
    assert _umount_checked(monkeypatch, 0) == Verdict.value(0, "own mount")


def test_the_store_lives_on_the_record_and_goes_on_release(req: Request) -> None:
    c = req.container
    assert c.policy is None
    st = scope.state_of(c)
    store = c.policy
    assert store is not None and store.loaded and scope.state_of(c) is st
    scope.release(c)
    assert c.policy is None and not store.loaded
