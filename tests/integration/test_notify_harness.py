"""The harness itself, against real runc and crun, without the daemon: a
tiny in-test listener proves both runtimes really hand over the notify fd
with the listenerPath message this project's daemon has to parse."""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Bundle, Runtime, StubListener, output, render_config

pytestmark = pytest.mark.integration

SYSFS_NR = 139


def test_container_runs_in_its_user_namespace(
        runtime: Runtime, bundle_factory: Callable[..., Bundle], new_id: Callable[[str], str]):
    b = bundle_factory(args=["sh", "-c", "id -u; cat /proc/self/uid_map; stat -c %u /; exit 3"])
    res = runtime.run(b, new_id("userns"))
    assert res.rc == 3, res
    uid, mapping, owner = res.stdout.split("\n", 2)
    assert uid == "0"
    assert mapping.split() == ["0", str(b.id_base), "65536"]
    # The rootfs is owned by the container's own (mapped) root.
    assert owner.strip() == "0"


def test_sys_probe_by_number_and_name(
        runtime: Runtime, bundle_factory: Callable[..., Bundle], new_id: Callable[[str], str]):
    b = bundle_factory(args=["sh", "-c", f"sys {SYSFS_NR} 3; sys sysfs 3; sys sysfs 1 s:ext4"])
    res = runtime.run(b, new_id("probe")).check()
    lines = res.stdout.splitlines()
    assert lines[0] == lines[1]
    count = int(lines[0].split()[0].removeprefix("ret="))
    assert count > 0
    # sysfs(1, name) gives the index of a filesystem type: a pointer argument.
    assert lines[2].startswith("ret=") and lines[2].endswith("errno=0")


def test_all_caps_are_clamped_to_the_bounding_set(
        runtime: Runtime, bundle_factory: Callable[..., Bundle], new_id: Callable[[str], str]):
    b = bundle_factory(args=["sh", "-c", "grep CapEff /proc/self/status"], caps="all")
    res = runtime.run(b, new_id("caps")).check()
    assert res.stdout.split()[1] != "0000000000000000"


@pytest.mark.parametrize("answer", [(42, 0), (0, 13)], ids=["value", "errno"])
def test_listener_gets_state_and_fd_and_answers(
        runtime: Runtime, bundle_factory: Callable[..., Bundle], new_id: Callable[[str], str],
        workdir: Path, answer: tuple[int, int]):
    listener = StubListener(workdir / "l.sock", answer=answer)
    try:
        b = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                           listener_path=str(listener.path), listener_metadata="meta-1",
                           annotations={"org.example.k": "v"})
        cid = new_id("listen")
        res = runtime.run(b, cid).check()
    finally:
        listener.stop()
    value, err = answer
    assert res.stdout.strip() == (f"ret={value} errno=0" if not err else f"ret=-1 errno={err}")
    [msg] = listener.messages
    assert msg.nfds == 1
    state = json.loads(msg.payload)
    assert state["fds"] == ["seccompFd"]
    assert state["metadata"] == "meta-1"
    assert state["state"]["id"] == cid
    assert state["state"]["status"] == "creating"
    assert state["state"]["annotations"] == {"org.example.k": "v"}
    assert state["pid"] > 0


def test_closed_notify_fd_fails_notified_calls_with_enosys(
        runtime: Runtime, bundle_factory: Callable[..., Bundle], new_id: Callable[[str], str],
        workdir: Path):
    listener = StubListener(workdir / "l.sock", answer=None)
    try:
        b = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                           listener_path=str(listener.path))
        res = runtime.run(b, new_id("closed")).check()
    finally:
        listener.stop()
    assert res.stdout.strip() == "ret=-1 errno=38"


def test_exec_process_sends_its_own_fd_with_status_running(
        runtime: Runtime, bundle_factory: Callable[..., Bundle], new_id: Callable[[str], str],
        workdir: Path):
    listener = StubListener(workdir / "l.sock", answer=(7, 0))
    try:
        b = bundle_factory(args=["sleep", "30"], notify=["sysfs"],
                           listener_path=str(listener.path))
        cid = new_id("exec")
        with runtime.started(b, cid):
            assert runtime.state(cid)["status"] == "running"
            res = runtime.exec(cid, ["sys", "sysfs", "3"]).check()
            assert res.stdout.strip() == "ret=7 errno=0"
    finally:
        listener.stop()
    assert [json.loads(m.payload)["state"]["status"] for m in listener.messages] == [
        "creating", "running"]
    assert all(m.nfds == 1 for m in listener.messages)


def test_started_container_output_and_forced_delete(
        runtime: Runtime, bundle_factory: Callable[..., Bundle], new_id: Callable[[str], str]):
    b = bundle_factory(args=["sh", "-c", "echo hello; sleep 30"])
    cid = new_id("bg")
    with runtime.started(b, cid):
        deadline = time.monotonic() + 5
        while "hello" not in output(b)[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert output(b)[0] == "hello\n"
    assert cid not in runtime.list()


def test_render_config_is_the_toml_it_means():
    rules = [{"syscall": "sysfs", "action": "value", "value": -5},
             {"syscall": "ustat", "action": "errno", "errno": "EPERM"}]
    sections = {"handlers": {"modules": ["a.b", 'q"uote']}, "test_handler": {"on": True}}
    assert tomllib.loads(render_config(rules, sections)) == {"rules": rules, **sections}
