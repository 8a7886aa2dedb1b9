"""Load (issue 14): 100 containers attached to one daemon at once through real runc,
each looping over a notified call and each answered with its own value throughout;
the daemon's RSS with 0 and 100 attached is printed (its target is the bench's)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, Runtime
from tests.harness.fleet import HANDLERS, Fleet, bundle_maker, rss_settled

pytestmark = pytest.mark.integration

COUNT = 100


def _stuck(runtime: Runtime, d: Daemon, cid: str) -> str:
    """Where a container that gets no answer waits, and its channel's counts."""
    out = [cid]
    try:
        pid = runtime.state(cid)["pid"]
        for f in ("syscall", "wchan"):
            with open(f"/proc/{pid}/{f}") as fh:
                out.append(f"{f}: {fh.read().strip()}")
    except Exception as e:  # it may have exited meanwhile
        out.append(repr(e))
    c = d.container(cid)
    out.append(f"calls: {c.get('calls') if c else None}")
    return "; ".join(out)


def test_hundred_containers_attached_at_once(
        runtime_factory: Callable[[str], Runtime], daemon_factory: Callable[..., Daemon],
        rootfs: Path, workdir: Path, new_id: Callable[[str], str]):
    runtime = runtime_factory("runc")
    d = daemon_factory(sections=HANDLERS, args=["--log-level", "info"])
    fleet = Fleet(runtime, d, bundle_maker(workdir, rootfs), new_id("load"))
    ids = fleet.prepare(COUNT)
    try:
        fleet.start(ids[:1])  # warm: what the daemon opens once
        assert not fleet.wait_rounds(ids[:1], 1, 10)
        rss0 = rss_settled(d.pid)
        fleet.start(ids[1:])
        assert fleet.attached() == set(ids), "not every container is attached at once"
        rss100 = rss_settled(d.pid)
        # Every container is answered after all of them attached, with its own value.
        done = {c: fleet.answers(c)[0] for c in ids}
        slow: list[str] = ids
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            slow = [c for c in ids if fleet.answers(c)[0] <= done[c]]
            if not slow:
                break
            time.sleep(0.5)
        assert not slow, (f"{len(slow)} containers got no answer after all attached: "
                          f"{[_stuck(runtime, d, c) for c in slow[:3]]}")
        wrong = {c: w[:3] for c in ids if (w := fleet.answers(c)[1])}
        assert not wrong, f"wrong answers: {wrong}"
        assert d.alive()
        per = sorted(fleet.attach_s.values())
        print(f"\nattach (create -> listed): p50 {per[len(per) // 2] * 1000:.0f} ms, "
              f"max {per[-1] * 1000:.0f} ms; daemon RSS: {rss0 / 1024:.1f} MiB with 1, "
              f"{rss100 / 1024:.1f} MiB with {COUNT} "
              f"({(rss100 - rss0) / (COUNT - 1):.0f} KiB per container)")
    finally:
        fleet.stop()
    deadline = time.monotonic() + 20
    while d.control("status")["containers"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.control("status")["containers"] == 0
