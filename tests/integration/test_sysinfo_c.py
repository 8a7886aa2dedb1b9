"""sysinfo(2) answered in C (csrc/canned.c): the Python handler reads the container's
figures and publishes them into the channel's shared table; the receiver thread (or the
native helper) answers the next calls from there until they are FRESH seconds old, then
the Python handler reads and publishes again."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from interceptd.emulation.sysinfo import FRESH
from tests.harness import Daemon, Runtime
from tests.harness.runtime import output
from tests.integration.policy_support import privileged, wait_for

pytestmark = pytest.mark.integration

C_REASON = "sysinfo emulated (shared figures)"
LIMIT = 256 << 20


def traced(daemon: Daemon, cid: str) -> list[dict[str, Any]]:
    """The container's events as they arrive (the thread ends with the daemon's stream or
    after 60 s)."""
    events: list[dict[str, Any]] = []

    def trace() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(str(daemon.control_sock))
            s.sendall(json.dumps({"cmd": "trace", "container": cid}).encode() + b"\n")
            f = s.makefile("rb")
            try:
                for line in f:
                    events.append(json.loads(line))
            except OSError:
                return

    t = threading.Thread(target=trace, daemon=True)
    t.start()
    time.sleep(0.3)  # subscribed before the container's first call
    return events


def sysinfo_events(events: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    si = [e for e in events if e.get("syscall") == "sysinfo"]
    c_path = [e for e in si if e.get("reason") == C_REASON]
    py_path = [e for e in si if str(e.get("reason", "")).startswith("sysinfo emulated [")]
    return c_path, py_path


def figures(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split("=", 1) for line in out.splitlines()
                                   if "=" in line and " " not in line) if v.isdigit()}


@pytest.mark.parametrize("rt_name", ["runc", "crun"])
@pytest.mark.parametrize("warm_native", [False, True], ids=["receiver", "helper"])
def test_container_figures_come_from_the_c_path(
        runtime_factory: Callable[[str], Runtime], bundle_factory, daemon: Daemon, new_id,
        rt_name: str, warm_native: bool):
    """200 calls in a row: one (or, across a FRESH boundary, two) reach Python, the rest
    are answered in C with the container's memory limit, uptime and process count. With
    `warm_native` a tmpfs mount first hands the notify fd to the native helper, which
    then answers them."""
    rt = runtime_factory(rt_name)
    cid = new_id("sic")
    events = traced(daemon, cid)
    warm = "mkdir -p /mnt/l && policy_mntapi loop 2 /mnt/l >/dev/null && " if warm_native else ""
    b = privileged(bundle_factory, daemon,
                   f"{warm}sleep 1.2 && policy_misc sysinfo 200 && echo done && exec sleep 60")
    b.config["linux"]["resources"] = {"memory": {"limit": LIMIT}, "pids": {"limit": 64}}
    b.write_config()
    with rt.started(b, cid):
        wait_for(lambda: "done" in output(b)[0], timeout=30)
        got = figures(output(b)[0])
        wait_for(lambda: len(sysinfo_events(events)[0]) >= 190, timeout=30)
        assert daemon.container(cid)["calls"]["fast"] >= 190 or warm_native
    c_path, py_path = sysinfo_events(events)
    assert got["totalram"] * got["mem_unit"] == LIMIT, got
    assert 0 < got["freeram"] <= LIMIT
    assert 1 <= got["procs"] <= 10, got
    assert 1 <= got["uptime"] < 60, got  # the container's (it slept 1.2 s), not the host's
    assert 1 <= len(py_path) <= 4, py_path
    assert len(c_path) + len(py_path) == 200, (len(c_path), len(py_path))
    assert all(e["verdict"] == "value" and e["errno"] == 0 for e in c_path), c_path[:3]


def test_stale_figures_go_to_python(runtime_factory: Callable[[str], Runtime], bundle_factory,
                                    daemon: Daemon, new_id):
    """Calls further apart than FRESH are each answered by the Python handler, which reads
    the cgroups again: the C path never answers with figures older than FRESH."""
    rt = runtime_factory("runc")
    cid = new_id("sis")
    events = traced(daemon, cid)
    gap = FRESH * 4
    script = " && ".join(["policy_misc sysinfo >/dev/null", f"sleep {gap}"] * 3
                         + ["echo done", "exec sleep 60"])
    b = privileged(bundle_factory, daemon, script)
    with rt.started(b, cid):
        wait_for(lambda: "done" in output(b)[0], timeout=30)
        wait_for(lambda: len(sysinfo_events(events)[1]) >= 3, timeout=30)
        time.sleep(0.3)  # the pump's next drain: a C answer would show by now
    c_path, py_path = sysinfo_events(events)
    assert len(py_path) == 3 and not c_path, (py_path, c_path)
