"""The native mount helper is started at attach (handlers/mount.py prestart_native), not
on the container's first mount: a container that mounts a while after its start has its
very first mount performed by the helper, and a container that never mounts has one
too (the cost of a fork per container, taken off the first call). The helper is handed
the notify fd with that first mount, so a container's Python-path calls before it keep
their direct mode (each forward through the helper is a hop more)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from tests.harness import Daemon, Runtime
from tests.harness.runtime import output
from tests.integration.policy_support import children, privileged
from tests.integration.test_policy_native import calls, helper_pid, wait_for

pytestmark = pytest.mark.integration


def _holds_notify_fd(pid: int) -> bool:
    return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:seccomp notify"
               for fd in os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("rt_name", ["runc", "crun"])
def test_helper_started_at_attach_takes_the_first_mount(
        runtime_factory: Callable[[str], Runtime], bundle_factory, daemon: Daemon, new_id,
        rt_name: str):
    rt = runtime_factory(rt_name)
    cid = new_id("pre")
    b = privileged(bundle_factory, daemon,
                   "echo up && sleep 2 && mkdir -p /mnt/l && "
                   "policy_mntapi loop 1 /mnt/l && echo done && exec sleep 60")
    with rt.started(b, cid):
        wait_for(lambda: "up" in output(b)[0])
        # Before any mount-family call: the helper exists, in the container's namespaces;
        # it gets the notify fd with the first call it is for.
        helper = wait_for(lambda: helper_pid(daemon.pid), timeout=5)
        assert not _holds_notify_fd(helper)
        assert calls(daemon, cid).get("native", 0) == 0
        wait_for(lambda: "done" in output(b)[0])
        out = output(b)[0]
        assert "loop ok=1 bad=0" in out, out
        got = calls(daemon, cid)
        assert got.get("native", 0) == 2 and got.get("python", 0) == 0, got
        assert _holds_notify_fd(helper)
    wait_for(lambda: not children(daemon.pid))  # gone with the container


def test_no_prestart_without_the_native_path(
        runtime_factory: Callable[[str], Runtime], bundle_factory, daemon_factory, new_id):
    d = daemon_factory(sections={"policy": {"native": False}})
    rt = runtime_factory("runc")
    cid = new_id("nopre")
    b = privileged(bundle_factory, d, "echo up && exec sleep 60")
    with rt.started(b, cid):
        wait_for(lambda: "up" in output(b)[0])
        wait_for(lambda: d.container(cid))
        time.sleep(1)
        assert helper_pid(d.pid) is None
