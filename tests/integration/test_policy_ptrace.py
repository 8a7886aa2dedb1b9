"""ptrace-class vetting from inside a real container in the --privileged shape: the
container's own processes can be traced; a process that is entering the container (host
executable, cwd outside the root, or still in the host's mount namespace) cannot, though
without the policy the kernel would let it happen."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import Runtime
from tests.integration.policy_support import EPERM, parse, privileged

pytestmark = pytest.mark.integration

SCRIPT = "sleep 1000 & echo $! > /tmp/bg; wait"


@pytest.fixture
def rt(runtime_factory: Callable[[str], Runtime]) -> Runtime:
    return runtime_factory("runc")


@contextmanager
def entering(helper: Path, init_pid: int, mode: str) -> Iterator[int]:
    """A host process joining the container (policy_enter); yields its pid inside."""
    p = subprocess.Popen([str(helper), str(init_pid), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline() if p.stdout else ""
        assert line.startswith("ready "), (line, p.stderr.read() if p.stderr else "")
        yield int(line.split()[1])
    finally:
        with_kill(p)


def with_kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)  # its child dies with it (PDEATHSIG)
    p.wait(timeout=10)


def call(rt: Runtime, cid: str, *args: str) -> tuple[int, int]:
    res = rt.exec(cid, ["tracer", *args], timeout=30)
    assert res.rc == 0, (res.stdout, res.stderr)
    out = parse(res.stdout)
    assert len(out) == 1, res.stdout
    return next(iter(out.values()))


def attempts(rt: Runtime, cid: str, pid: int) -> dict[str, tuple[int, int]]:
    return {
        "attach": call(rt, cid, "attach", str(pid)),
        "seize": call(rt, cid, "seize", str(pid)),
        "vmread": call(rt, cid, "vmread", str(pid), "0x400000"),
        "kcmp": call(rt, cid, "kcmp", str(pid)),
        "pidfd_getfd": call(rt, cid, "pidfd_getfd", str(pid)),
    }


def test_own_processes_can_be_traced(rt, bundle_factory, daemon, new_id):
    b = privileged(bundle_factory, daemon, SCRIPT)
    with rt.started(b, new_id("pol")) as cid:
        assert call(rt, cid, "child") == (0, 0)  # attach, peek, poke, detach an own child
        res = rt.exec(cid, ["sh", "-c", "tracer attach $(cat /tmp/bg); "
                                        "tracer seize $(cat /tmp/bg); "
                                        "tracer kcmp $(cat /tmp/bg)"])
        out = parse(res.stdout)
        assert out["attach"] == (0, 0) and out["seize"] == (0, 0), res.stdout
        assert out["kcmp"][0] >= 0, res.stdout


@pytest.mark.parametrize("mode", ["mnt", "nomnt"])
def test_entering_process_is_off_limits(rt, bundle_factory, daemon, new_id, helper_bins,
                                        mode):
    b = privileged(bundle_factory, daemon, SCRIPT)
    with rt.started(b, new_id("pol")) as cid:
        init = rt.state(cid)["pid"]
        with entering(helper_bins["policy_enter"], init, mode) as pid:
            out = attempts(rt, cid, pid)
        for k, v in out.items():
            assert v == (-1, EPERM), (k, out)
        log = daemon.log()
        assert "entering the container" in log or "host mount namespace" in log


def test_without_policy_the_entering_process_is_exposed(rt, bundle_factory, new_id,
                                                        helper_bins):
    """The control: no filter, the same attach succeeds (what the policy prevents)."""
    b = privileged(bundle_factory, None, SCRIPT)
    with rt.started(b, new_id("raw")) as cid:
        init = rt.state(cid)["pid"]
        with entering(helper_bins["policy_enter"], init, "mnt") as pid:
            assert call(rt, cid, "attach", str(pid)) == (0, 0)
