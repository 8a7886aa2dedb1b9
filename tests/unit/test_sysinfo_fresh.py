"""sysinfo(2)'s figures are reused for FRESH seconds (fairness: a container's sysinfo loop
costs one cgroup read per FRESH, not one per call)."""

from __future__ import annotations

import os

import pytest

from interceptd.handlers import sysinfo as si


def test_figures_are_reused_while_fresh_then_read_again(monkeypatch: pytest.MonkeyPatch):
    src = si.Source.of(os.getpid())
    reads = []
    real = si.Source.read

    def counting(self: si.Source) -> si.Sysinfo:
        reads.append(1)
        return real(self)

    monkeypatch.setattr(si.Source, "read", counting)
    clock = [1000.0]
    monkeypatch.setattr(si.time, "monotonic", lambda: clock[0])
    first = src.gather()
    clock[0] += si.FRESH / 2
    assert src.gather() is first and len(reads) == 1
    clock[0] += si.FRESH  # stale now
    src.gather()
    assert len(reads) == 2
    clock[0] -= 10 * si.FRESH  # a clock that went back is never trusted
    src.gather()
    assert len(reads) == 3
