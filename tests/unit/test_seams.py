"""The seams' Protocols (interceptd/seams.py) are met by the real classes and by the unit
fakes alike, so handlers need no attribute probes for either."""

from __future__ import annotations

import errno
import os

import fakecore

from interceptd import seams
from interceptd.handlers import Request
from interceptd.registry import Container
from interceptd.syscalls import nr
from tests.unit.test_emulation_bookkeeping import FakeContainer as EmulationFake
from tests.unit.test_policy_state import FakeContainer


def _record() -> Container:
    return Container("c1", "/b", {}, os.getpid(), -1)


def _request(core: seams.Core) -> Request:
    return Request(_record(), fakecore.Notification(1, os.getpid(), nr("mount")), "mount",
                   [0] * 6, core)


def test_the_records_and_fakes_are_containers() -> None:
    assert isinstance(_record(), seams.Container)
    assert isinstance(FakeContainer("c2", os.getpid()), seams.Container)
    assert isinstance(EmulationFake(1, os.getpid()), seams.Container)


def test_requests_are_requests() -> None:
    assert isinstance(_request(fakecore), seams.Request)


def test_the_fake_core_and_its_channel() -> None:
    assert isinstance(fakecore, seams.Core)
    assert isinstance(fakecore.FakeChannel(1), seams.Channel)
    assert isinstance(fakecore.ns_exec(-1, 1, 0, "mount"), seams.ExecResult)


def test_the_fake_engine_and_its_records() -> None:
    engine = fakecore.FakeEngine()
    assert isinstance(engine, seams.Engine)
    assert isinstance(engine.channel(1), seams.Channel)
    assert isinstance(fakecore.DecisionRecord(1, 1, 1, 1, 1, 0), seams.DecisionRecord)
    assert isinstance(fakecore.Notification(1, os.getpid(), 1), seams.Notification)
    assert isinstance(fakecore.Detached(3), seams.Detached)


def test_the_real_core_and_its_channel() -> None:
    from interceptd import core  # built by `make setup`

    assert isinstance(core, seams.Core)
    engine = core.Engine(ring_size=16)
    try:
        assert isinstance(engine, seams.Engine)
        ch = engine.channel(1)
        assert isinstance(ch, seams.Channel)
        ch.close()
    finally:
        engine.close()
    assert isinstance(core.DecisionRecord(1, 1, 1, 1, 1, 0, 0), seams.DecisionRecord)
    assert isinstance(core.Notification(1, 1, 1, 0, 0, (0,) * 6, 3), seams.Notification)
    assert isinstance(core.Detached(3), seams.Detached)
    for name in ("set_rule", "enable_native"):
        assert callable(getattr(core.Channel, name))
    assert isinstance(core.ExecResult(0, 0, -1), seams.ExecResult)


def test_a_new_record_has_no_policy_state_yet() -> None:
    assert _record().policy is None


def test_the_fake_core_has_executors() -> None:
    x = fakecore.Executor(-1, os.getpid(), 0)
    assert isinstance(x, seams.Executor)
    assert x.run(-1, os.getpid(), "umount2", "/x", 0) == fakecore.ExecResult(-1, errno.ENOSYS)


def test_the_real_core_forks_its_executors_from_a_zygote() -> None:
    from interceptd import core

    assert isinstance(core.ZYGOTE_PARTS, seams.ZygoteParts)
