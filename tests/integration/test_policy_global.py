"""The kernel-global deny list (in the filter itself), adjtimex vetting, and sysinfo(2)
emulation, from inside real containers in the --privileged shape."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import Runtime
from tests.integration.policy_support import EINVAL, EPERM, privileged, probe, run_script

pytestmark = pytest.mark.integration

DENIED = {
    "kexec_load": "sys kexec_load 0 0 0 0",
    "kexec_file_load": "sys kexec_file_load -1 -1 0 s: 0",
    "init_module": "sys init_module b:16 16 s:",
    "finit_module": "sys finit_module -1 s: 0",
    "delete_module": "sys delete_module s:loop 0",
    "open_by_handle_at": "sys open_by_handle_at -1 b:64 0",
    "iopl": "sys iopl 3",
    "ioperm": "sys ioperm 0 1 1",
    "swapon": "sys swapon s:/tmp/swap 0",
    "swapoff": "sys swapoff s:/tmp/swap",
    "syslog": "sys syslog 3 b:64 64",
    "acct": "sys acct 0",
    "settimeofday": "sys settimeofday b:16 0",
    "clock_settime": "sys clock_settime 0 b:16",
    "quotactl": "sys quotactl 0x800007 s:/dev/x 0 b:64",
    "bpf": "sys bpf 0 b:128 128",
    "request_key": "sys request_key s:user s:k s:callout -3",
    # pid == -1 (system-wide), as a full 64-bit -1 and with the upper half clear.
    "perf_systemwide": "sys perf_event_open b:128 -1 0 -1 0",
    "perf_systemwide_32": "sys perf_event_open b:128 0xffffffff 0 -1 0",
}


@pytest.fixture
def rt(runtime_factory: Callable[[str], Runtime]) -> Runtime:
    return runtime_factory("runc")


def test_kernel_global_syscalls_denied(rt, bundle_factory, daemon, new_id):
    script = "\n".join(probe(k, v) for k, v in DENIED.items())
    script += "\n" + probe("listener", "policy_misc listener", last=True)
    out = run_script(rt, privileged(bundle_factory, daemon, script), new_id("pol"))
    for k in DENIED:
        assert out[k] == (-1, EPERM), (k, out)
    assert out["listener"] == (-1, EINVAL)
    # In the filter itself: none of these reached the daemon.
    assert "syscall=kexec_load" not in daemon.log()


def test_without_policy_keyring_and_listener_work(rt, bundle_factory, new_id):
    """The control: what the deny list takes away does work in a bare container."""
    script = "\n".join([probe("keyctl", "sys keyctl 0 -3 0"),
                        probe("listener", "policy_misc listener", last=True)])
    out = run_script(rt, privileged(bundle_factory, None, script), new_id("raw"))
    assert out["keyctl"][0] != -1 and out["listener"] == (0, 0), out


def test_adjtimex_read_only_allowed_set_refused(rt, bundle_factory, daemon, new_id):
    script = "\n".join([
        "policy_misc adjtimex 0 | sed 's/^adjtimex/adj_read/'",
        "policy_misc adjtimex 1 | sed 's/^adjtimex/adj_set/'",
        probe("clock_adj_read", "sys clock_adjtime 0 b:208"),
    ])
    out = run_script(rt, privileged(bundle_factory, daemon, script), new_id("pol"))
    assert out["adj_read"][0] >= 0 and out["adj_read"][1] == 0, out
    assert out["clock_adj_read"][0] >= 0, out
    assert out["adj_set"] == (-1, EPERM)


def test_sysinfo_shows_the_container(rt, bundle_factory, daemon, new_id):
    b = privileged(bundle_factory, daemon, "policy_misc sysinfo; uptime")
    b.config["linux"]["resources"] = {"memory": {"limit": 256 << 20}, "pids": {"limit": 64}}
    b.write_config()
    res = rt.run(b, new_id("pol"), timeout=60)
    assert res.rc == 0, (res.stdout, res.stderr)
    kv = dict(line.split("=", 1) for line in res.stdout.splitlines()
              if "=" in line and " " not in line)
    assert int(kv["totalram"]) * int(kv["mem_unit"]) == 256 << 20, res.stdout
    assert 0 < int(kv["freeram"]) <= 256 << 20
    assert 1 <= int(kv["procs"]) <= 10
    assert 0 <= int(kv["uptime"]) < 60
    # busybox uptime uses sysinfo(2) too. (busybox free also reads /proc/meminfo, the
    # host's until /proc emulation lands, so its "used" column is not checked here.)
    assert "up 0 min" in res.stdout, res.stdout


def test_bad_pointers_get_kernel_errnos(rt, bundle_factory, daemon, new_id):
    long_path = "/" + "a" * 5000
    script = "\n".join([
        probe("mount_bad_src", "sys mount 0x1 s:/mnt s:tmpfs 0 0"),
        probe("umount_bad", "sys umount2 0x10 0"),
        probe("umount_long", f"sys umount2 s:{long_path} 0"),
        probe("sysinfo_bad", "sys sysinfo 0x10"),
        probe("setattr_bad", "sys mount_setattr -100 s:/tmp 0 0x10 32"),
        probe("still_serving", "sys mount s:t s:/mnt s:tmpfs 0 0"),
    ])
    out = run_script(rt, privileged(bundle_factory, daemon, script), new_id("pol"))
    assert out["mount_bad_src"] == (-1, 14) and out["umount_bad"] == (-1, 14)
    assert out["umount_long"] == (-1, 36)
    assert out["sysinfo_bad"] == (-1, 14) and out["setattr_bad"] == (-1, 14)
    assert out["still_serving"] == (0, 0)
    assert daemon.alive()
