"""A notified syscall answered by the daemon, through runc and crun: by the C
fast path (config [[rules]]) and by a Python handler, with a chosen value and
a chosen errno; and a process `exec`'d into the same container."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Bundle, Daemon, Runtime
from tests.harness.handlers import ANNOTATION

pytestmark = pytest.mark.integration

HANDLERS = {"handlers": {"modules": ["tests.harness.handlers"]}}

# sysfs(2) is obsolete: nothing in runc, crun or busybox calls it, so faking it
# cannot break container start-up (a faked getppid kills runc's init).
CASES: dict[str, dict[str, Any]] = {
    "fast-value": {"rules": [{"syscall": "sysfs", "action": "value", "value": 4711}],
                   "expect": "ret=4711 errno=0"},
    "fast-errno": {"rules": [{"syscall": "sysfs", "action": "errno", "errno": "EACCES"}],
                   "expect": "ret=-1 errno=13"},
    "python-value": {"sections": {**HANDLERS, "test_handler": {"answer": "value:1234"}},
                     "expect": "ret=1234 errno=0"},
    "python-errno": {"sections": {**HANDLERS, "test_handler": {"answer": "errno:71"}},
                     "expect": "ret=-1 errno=71"},
}


def status_counters(d: Daemon) -> dict[str, Any]:
    return d.control("status")["counters"]


@pytest.mark.parametrize("case", list(CASES))
def test_notified_syscall_is_answered(
        case: str, runtime: Runtime, bundle_factory: Callable[..., Bundle],
        daemon_factory: Callable[..., Daemon], new_id: Callable[[str], str]):
    c = CASES[case]
    d = daemon_factory(rules=c.get("rules"), sections=c.get("sections"))
    b = bundle_factory(args=["sh", "-c", "sys sysfs 3; sys -n 100 sysfs 3"], notify=["sysfs"],
                       listener_path=d.listener_path)
    res = runtime.run(b, new_id(case)).check()
    assert res.stdout.splitlines() == [c["expect"]] * 2
    assert d.alive()


def test_unlisted_notified_syscall_fails_closed(
        runtime: Runtime, bundle_factory: Callable[..., Bundle],
        daemon_factory: Callable[..., Daemon], new_id: Callable[[str], str]):
    d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 1}])
    b = bundle_factory(args=["sh", "-c", "sys sysfs 3; sys ustat 0 b:32"],
                       notify=["sysfs", "ustat"], listener_path=d.listener_path)
    res = runtime.run(b, new_id("closed")).check()
    assert res.stdout.splitlines() == ["ret=1 errno=0", "ret=-1 errno=1"]


@pytest.mark.parametrize("path", ["fast", "python"])
def test_exec_process_is_attached_to_the_same_container(
        path: str, runtime: Runtime, bundle_factory: Callable[..., Bundle],
        daemon_factory: Callable[..., Daemon], new_id: Callable[[str], str]):
    if path == "fast":
        d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 77}])
        annotations = {}
    else:
        d = daemon_factory(sections=HANDLERS)
        annotations = {ANNOTATION: "value:77"}
    b = bundle_factory(args=["sleep", "60"], notify=["sysfs"], listener_path=d.listener_path,
                       annotations=annotations)
    cid = new_id("exec")
    with runtime.started(b, cid):
        assert runtime.state(cid)["status"] == "running"
        d.wait_container(cid)
        for _ in range(2):
            res = runtime.exec(cid, ["sys", "sysfs", "3"]).check()
            assert res.stdout.strip() == "ret=77 errno=0"
        # A long-lived exec'd process: its notify fd joins the same container.
        proc = subprocess.Popen(runtime.cmd("exec", cid, "sh", "-c", "sys sysfs 3; sleep 60"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: len(info(d, cid)["notify_fds"]) == 2, 10), info(d, cid)
            status = d.control("status")
            assert status["containers"] == 1
            assert status["counters"]["containers_attached"][""] == 1
            assert info(d, cid)["init_pid"] == runtime.state(cid)["pid"]
        finally:
            runtime.kill(cid)
            out, err = proc.communicate(timeout=15)
        assert out.strip() == "ret=77 errno=0", err
    assert d.alive()


def info(d: Daemon, cid: str) -> dict[str, Any]:
    c = d.container(cid)
    assert c is not None, f"{cid} not attached"
    return c


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_exec_message_before_the_init_message_waits_for_it(
        runtime_factory: Callable[[str], Runtime], bundle_factory: Callable[..., Bundle],
        daemon_factory: Callable[..., Daemon], new_id: Callable[[str], str],
        helper_bins: dict[str, Any], workdir: Any) -> None:
    """crun's `start` returns before the daemon has registered the container, so
    an exec right after it can reach the daemon first: its fd is held (<= 2 s)
    until the init's message arrives, then attached (not refused: ENOSYS)."""

    d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 99}])
    cid = new_id("early-exec")
    # crun's exec shape: status "running", pid 0 and bundle "." in the state.
    doc = {"ociVersion": "0.2.0", "fds": ["seccompFd"], "pid": "@PID@", "metadata": "",
           "state": {"ociVersion": "1.0.2", "id": cid, "status": "running", "pid": 0,
                     "bundle": ".", "annotations": {}}}
    msg = workdir / "early-exec.json"
    msg.write_text(json.dumps(doc).replace('"@PID@"', "@PID@"))
    early = subprocess.Popen([str(helper_bins["notify_client"]), d.listener_path, str(msg)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the exec's message is in, the init's not yet
        rt = runtime_factory("runc")  # runc sends the init's message at create
        b = bundle_factory(args=["sleep", "60"], notify=["sysfs"], listener_path=d.listener_path)
        with rt.started(b, cid):
            out, err = early.communicate(timeout=15)
            assert early.returncode == 0, err
            assert out.strip() == "ret=99 errno=0"
            c = d.wait_container(cid)
            assert len(c["notify_fds"]) >= 1
    finally:
        if early.poll() is None:
            early.kill()
            early.wait()
    assert status_counters(d).get("listener_errors", {}).get("unknown container", 0) == 0
