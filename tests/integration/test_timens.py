"""A time namespace per container (issue 10): interceptd-runc over runc and crun runs the
runtime in a new time namespace whose clocks start at create, and `exec` joins it. Inside,
/proc/uptime (the daemon's), sysinfo(2) (the daemon's), /proc/stat's btime and the
kernel's process start times all count from the container's creation; the container
cannot change its offsets."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.harness import Runtime
from tests.integration.test_runtime_shim import assert_nothing_left, plain_bundle, shim

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/proc/self/ns/time"),
                                 reason="needs CONFIG_TIME_NS"),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]
__all__ = ["shim"]  # the fixture, shared with test_runtime_shim

HZ = os.sysconf("SC_CLK_TCK")

SCRIPT = r"""
policy_misc sysinfo | grep '^uptime='  | sed 's/^/si_/'
echo "btime=$(grep ^btime /proc/stat | cut -d' ' -f2)"
echo "now=$(date +%s)"
echo "self_start=$(cut -d')' -f2 /proc/self/stat | cut -d' ' -f21)"
echo "init_start=$(cut -d')' -f2 /proc/1/stat | cut -d' ' -f21)"
echo "uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "self_ns=$(readlink /proc/self/ns/time)"
echo "init_ns=$(readlink /proc/1/ns/time)"
echo "offsets=$(tr '\n' ' ' < /proc/self/timens_offsets)"
{ echo 'boottime 1000 0' > /proc/self/timens_offsets; } 2>/dev/null; echo "write_rc=$?"
{ echo 'boottime 1000 0' > /proc/1/timens_offsets; } 2>/dev/null; echo "write1_rc=$?"
"""


def kv(out: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(.*)$", out, flags=re.M))


def ns_time(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/time")


def test_container_clocks_start_at_create(shim: Runtime, bundle_factory, new_id,
                                          monkeypatch) -> None:
    b = plain_bundle(bundle_factory, ["sleep", "120"], caps="all")
    with shim.started(b, new_id("tns")) as cid:
        pid = shim.state(cid)["pid"]
        # The init (and so the container) is in a time namespace of its own, whose boot
        # and monotonic clocks were set back to near 0 when it was made.
        assert ns_time(pid) != ns_time("self")
        offsets = dict(line.split(None, 1) for line in
                       Path(f"/proc/{pid}/timens_offsets").read_text().splitlines())
        boot_off = int(offsets["boottime"].split()[0])
        host_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        assert -host_boot < boot_off < -host_boot + 120
        assert int(offsets["monotonic"].split()[0]) < 0
        # The kernel's own uptime in that namespace (the host's /proc, read by a process
        # that joined it) and the daemon's /proc/uptime in the container agree.
        fd = os.open(f"/proc/{pid}/ns/time", os.O_RDONLY)
        try:
            kernel_up = float(_in_timens(fd, "/proc/uptime").split()[0])
        finally:
            os.close(fd)
        res = shim.exec(cid, ["sh", "-c", SCRIPT])
        out = kv(res.stdout)
        assert "uptime" in out and "si_uptime" in out, res.stdout + res.stderr
        up = float(out["uptime"])
        assert 0 <= up < 60, out
        assert abs(up - kernel_up) < 5, (up, kernel_up)
        # sysinfo(2) (emulated) rounds up like the kernel's; btime + uptime is now.
        assert abs(int(out["si_uptime"]) - up) <= 1.5, out
        assert abs(int(out["btime"]) + up - int(out["now"])) <= 2, out
        # Process ages: both start times lie within the container's uptime (host-relative
        # start times would be the host's uptime ahead of it).
        init_start = int(out["init_start"]) / HZ
        self_start = int(out["self_start"]) / HZ
        assert 0 <= init_start <= self_start <= up + 0.02, out
        # The exec'd process joined the init's time namespace.
        assert out["self_ns"] == out["init_ns"] == ns_time(pid), out
        # The container cannot move its clocks (the namespace is the host's user
        # namespace's, and processes are in it already).
        assert out["write_rc"] != "0" and out["write1_rc"] != "0", out
        assert Path(f"/proc/{pid}/timens_offsets").read_text().split()[4] == str(boot_off)
        # The Python entry (no prepare service) joins it too.
        monkeypatch.setenv("INTERCEPTD_RUNC_NO_SERVICE", "1")
        py = shim.exec(cid, ["readlink", "/proc/self/ns/time"])
        assert py.stdout.strip() == ns_time(pid), py.stdout + py.stderr
    assert_nothing_left(shim)


def _in_timens(fd: int, path: str) -> str:
    """`path` read by a child that joined the time namespace `fd` (setns wants a
    single-threaded caller: a fresh fork is)."""
    import ctypes

    from interceptd.kernel.consts import CLONE_NEWTIME

    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWTIME) != 0:
                os._exit(2)
            # The active namespace is the new one only after an exec or in a child.
            grandchild = os.fork()
            if grandchild == 0:
                with open(path) as f:
                    os.write(w, f.read().encode())
                os._exit(0)
            os.waitpid(grandchild, 0)
            os._exit(0)
        finally:
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data


def test_run_gets_a_time_namespace_too(shim: Runtime, bundle_factory, new_id) -> None:
    """`run` (create + start in one, the Python entry's path too)."""
    b = plain_bundle(bundle_factory, ["sh", "-c", "cut -d' ' -f1 /proc/uptime; "
                                                  "readlink /proc/self/ns/time"], caps="all")
    res = shim.run(b, new_id("tnr"))
    assert res.rc == 0, res.stderr
    up, ns = res.stdout.split()
    assert float(up) < 60 and ns != ns_time("self")
    assert_nothing_left(shim)
