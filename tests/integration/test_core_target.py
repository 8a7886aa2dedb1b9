"""Bounded reads of a notifying task's memory, checked with ID_VALID."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import pytest

from interceptd import core
from tests.integration import test_core_support as sup
from tests.integration.test_core_support import SYSFS


@pytest.fixture
def channel() -> Iterator[tuple[core.Engine, core.Channel]]:
    e = core.Engine()
    ch = e.channel(1)
    ch.set_rule(SYSFS, core.ACT_PYTHON)
    yield e, ch
    e.close()


def first_notification(ch: core.Channel) -> core.Notification:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for item in ch.wait(0.2):
            if isinstance(item, core.Notification):
                return item
    raise AssertionError("no notification")


def test_reads_pointer_argument(channel: tuple[core.Engine, core.Channel]) -> None:
    e, ch = channel
    t = sup.start([SYSFS], f"str:{SYSFS}:/some/path/in/the/target")
    try:
        e.attach(ch, t.listener)
        t.go()
        n = first_notification(ch)
        addr = n.args[0]
        assert core.read_target_string(n.pid, addr, 4096, n.notify_fd, n.id) == (
            b"/some/path/in/the/target")
        assert core.read_target(n.pid, addr, 5, n.notify_fd, n.id) == b"/some"
        with pytest.raises(OSError) as ei:
            core.read_target_string(n.pid, addr, 6, n.notify_fd, n.id)
        assert ei.value.errno == errno.ENAMETOOLONG  # no NUL within the bound
        with pytest.raises(OSError) as ei:
            core.read_target(n.pid, 8, 16, n.notify_fd, n.id)
        assert ei.value.errno in (errno.EFAULT, errno.EIO)
        with pytest.raises(OSError) as ei:
            core.read_target(n.pid, addr, core.READ_MAX + 1, n.notify_fd, n.id)
        assert ei.value.errno == errno.EINVAL
        ch.respond(n, value=0)
        assert t.finish() == [f"str {SYSFS} 0 0"]
    finally:
        t.close()


def test_target_gone_after_the_target_died(channel: tuple[core.Engine, core.Channel]) -> None:
    e, ch = channel
    t = sup.start([SYSFS], f"str:{SYSFS}:secret")
    try:
        e.attach(ch, t.listener)
        t.go()
        n = first_notification(ch)
        assert core.read_target_string(n.pid, n.args[0], 64, n.notify_fd, n.id) == b"secret"
        assert ch.read_target_string(n, n.args[0], 64) == b"secret"
        assert ch.read_target(n, n.args[0], 3) == b"sec"
        assert ch.id_valid(n)
        t.kill()
        assert not ch.id_valid(n)
        with pytest.raises(core.TargetGone):
            ch.read_target_string(n, n.args[0], 64)
        with pytest.raises(core.TargetGone):
            ch.read_target(n, n.args[0], 4)
        with pytest.raises(core.TargetGone):
            ch.respond(n, value=0)
    finally:
        t.close()
