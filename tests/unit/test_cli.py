import io
import json
import time

import pytest

from interceptd import cli
from interceptd.control import ControlServer
from interceptd.events import Counters, Event, EventBus

STATUS = {"version": "0.1.0", "pid": 4242, "uptime": 75.5, "state_dir": "/s",
          "metrics_address": "off", "containers": 1, "dropped_events": 0,
          "features": {"sync_wakeup": True, "addfd_send": False},
          "counters": {"listener_errors": {"no fd": 2}, "containers_attached": {"": 1}},
          "runtime_policy": {
              "notified": ["mount", "umount2"],
              "denied": [{"names": ["kexec_load", "init_module"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 1},
                         {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}}
CONTAINERS = [{"id": "web-1", "init_pid": 77, "notify_fds": [8, 9],
               "started_at": time.time() - 5, "bundle": "/b/web"}]


@pytest.fixture
def daemon(tmp_path):
    bus = EventBus()
    srv = ControlServer(str(tmp_path / "control.sock"), status=lambda: dict(STATUS),
                        containers=lambda: CONTAINERS, bus=bus, counters=Counters())
    srv.start()
    yield tmp_path, bus
    srv.stop()


def run(*argv):
    out = io.StringIO()
    rc = cli.main(list(argv), out=out)
    return rc, out.getvalue()


def test_status_table(daemon):
    d, _ = daemon
    rc, out = run("--state-dir", str(d), "status")
    assert rc == 0
    assert "pid             4242" in out
    assert "uptime          1m16s" in out or "uptime          1m15s" in out
    assert "listener_errors{no fd}  2" in out
    assert "sync_wakeup=yes" in out and "addfd_send=no" in out


def test_status_json(daemon):
    d, _ = daemon
    rc, out = run("--state-dir", str(d), "status", "-o", "json")
    assert rc == 0 and json.loads(out) == STATUS


def test_containers_table_and_json(daemon):
    d, _ = daemon
    rc, out = run("--state-dir", str(d), "containers")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["ID", "INIT", "PID", "FDS", "AGE", "CALLS",
                                            "FAST/PY/NATIVE", "BUNDLE"]
    assert lines[1].split()[:3] == ["web-1", "77", "2"] and lines[1].endswith("/b/web")
    assert "0/0/0" in lines[1].split()  # a container without counts yet
    rc, out = run("--state-dir", str(d), "containers", "-o", "json")
    assert json.loads(out) == {"containers": CONTAINERS}


def test_no_daemon(tmp_path, capsys):
    rc, _ = run("--state-dir", str(tmp_path), "status")
    assert rc == 1
    assert "cannot reach interceptd" in capsys.readouterr().err


def test_trace_count(daemon):
    d, bus = daemon

    def feed():
        deadline = time.monotonic() + 5
        while bus.subscribers == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(3):
            bus.publish(Event(time=0.0, container="web-1", pid=i, comm="sh", syscall="sysfs",
                              args=[3], verdict="value", errno=0, reason="rule", value=7))

    import threading
    threading.Thread(target=feed).start()
    rc, out = run("--state-dir", str(d), "trace", "--count", "2", "--syscall", "sysfs")
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert "web-1 0/sh sysfs(0x3) -> value=7 [rule]" in lines[0]


def test_format_event_errno():
    line = cli.format_event({"time": 0, "container": "c", "pid": 1, "comm": "x",
                             "syscall": "mount", "args": [], "verdict": "errno", "errno": 1,
                             "reason": "denied"})
    assert line.endswith("mount() -> errno=1 [denied]\n")


def test_format_event_shows_decoded_details_instead_of_raw_args():
    line = cli.format_event({"time": 0, "container": "c", "pid": 1, "comm": "sh",
                             "syscall": "mount", "args": [0x7FFE0, 0x7FFF0, 0, 0, 0, 0],
                             "details": {"target": "/proc", "fstype": "proc"},
                             "verdict": "errno", "errno": 16, "reason": "immutable"})
    assert "mount(target='/proc', fstype='proc') -> errno=16 [immutable]" in line
    assert "0x7ffe0" not in line


def test_policy_shows_what_the_runtime_adds(daemon):
    d, _ = daemon
    rc, out = run("--state-dir", str(d), "policy")
    assert rc == 0
    assert "notified (vetted by the daemon):\n  mount\n  umount2\n" in out
    assert "  kexec_load,init_module -> errno 1\n" in out
    assert "  seccomp -> errno 22 (with argument conditions)\n" in out
    rc, out = run("--state-dir", str(d), "policy", "-o", "json")
    assert rc == 0 and json.loads(out) == STATUS["runtime_policy"]


def test_policy_without_a_daemon_is_a_clear_error(tmp_path, capsys):
    rc, _ = run("--state-dir", str(tmp_path), "policy")
    assert rc == 1
    assert "cannot reach interceptd" in capsys.readouterr().err


def test_format_probe_aligns_and_says_yes_no():
    out = cli.format_probe({"user_notif": True, "bpf_lsm": False,
                            "cgroup2": "/sys/fs/cgroup/unified"})
    assert out == ("user_notif  yes\nbpf_lsm     no\n"
                   "cgroup2     /sys/fs/cgroup/unified\n")


def test_containers_table_shows_call_counts():
    from interceptd.cli import format_containers

    out = format_containers([{"id": "c1", "init_pid": 7, "notify_fds": [3], "started_at": 0,
                              "bundle": "/b", "calls": {"fast": 4, "python": 2, "native": 90}}])
    head, row = out.splitlines()
    assert "CALLS FAST/PY/NATIVE" in head
    assert row.split()[:2] == ["c1", "7"] and "4/2/90" in row.split()
