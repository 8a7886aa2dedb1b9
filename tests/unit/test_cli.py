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
    assert line.endswith("mount() -> errno=1(EPERM) [denied]\n")
    assert " seccomp c 1/x " in line and "\x1b[" not in line
    coloured = cli.format_event({"time": 0, "container": "c", "pid": 1, "comm": "x",
                                 "syscall": "mount", "args": [], "verdict": "errno",
                                 "errno": 1, "reason": "denied"}, colour=True)
    assert "\x1b[31merrno=1(EPERM)\x1b[0m" in coloured


def test_format_event_bpf_without_arguments():
    line = cli.format_event({"time": 1.25, "container": "c", "pid": 9, "comm": "sys",
                             "syscall": "mount", "args": [0] * 6, "verdict": "errno",
                             "errno": 1, "reason": "sensitive syscall", "source": "bpf",
                             "details": {"args_seen": False}})
    assert ".250 bpf     c 9/sys mount(?) -> errno=1(EPERM) [sensitive syscall]" in line


def test_format_event_shows_decoded_details_instead_of_raw_args():
    line = cli.format_event({"time": 0, "container": "c", "pid": 1, "comm": "sh",
                             "syscall": "mount", "args": [0x7FFE0, 0x7FFF0, 0, 0, 0, 0],
                             "details": {"target": "/proc", "fstype": "proc"},
                             "verdict": "errno", "errno": 16, "reason": "immutable"})
    assert "mount(target='/proc', fstype='proc') -> errno=16(EBUSY) [immutable]" in line
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
    out = cli.format_probe({"bpf_fentry": False, "reasons": {"bpf_fentry": "refused: EPERM"}})
    assert out == "bpf_fentry  no (refused: EPERM)\n"


def test_containers_table_shows_call_counts():
    from interceptd.cli import format_containers

    out = format_containers([{"id": "c1", "init_pid": 7, "notify_fds": [3], "started_at": 0,
                              "bundle": "/b", "calls": {"fast": 4, "python": 2, "native": 90}}])
    head, row = out.splitlines()
    assert "CALLS FAST/PY/NATIVE" in head
    assert row.split()[:2] == ["c1", "7"] and "4/2/90" in row.split()


def test_containers_verbose_shows_cgroup_maps_and_ebpf_counts():
    out = cli.format_containers_verbose([{
        "id": "c1", "init_pid": 7, "notify_fds": [3], "started_at": 0, "bundle": "/b",
        "calls": {}, "cgroup_paths": {"": "/c1", "pids": "/c1"},
        "uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]],
        "ebpf": {"getppid": [10000, 0], "read": [30, 2], "mount": [1, 1]}}], top=2)
    assert "  cgroup v2   /c1\n" in out
    assert "  uid map     0 100000 65536\n" in out
    assert "  syscalls    10031 (3 failed); top: getppid 10000, read 30\n" in out


def test_format_stats_top_and_rates():
    s = {"ebpf": {"up": True}, "containers": {"c1": {"getppid": [300, 0], "read": [10, 1]}}}
    prev = {"containers": {"c1": {"getppid": [100, 0]}}}
    out = cli.format_stats(s, top=1, previous=prev, interval=2.0)
    assert out.splitlines()[0] == "c1  calls 310  errors 1"
    assert "getppid" in out and "100/s" in out and "read" not in out
    assert cli.format_stats({"ebpf": {"up": False, "reason": "no bcc"}}, 5) == (
        "eBPF layer off: no bcc\n")


def test_format_event_escapes_what_a_container_controls():
    line = cli.format_event({"time": 0, "container": "c", "pid": 1,
                             "comm": "\x1b]0;owned\x07", "syscall": "mount", "args": [],
                             "verdict": "errno", "errno": 1, "reason": "bad\npath\x1b[2J",
                             "details": {"path": "/x\x1b[31m"}})
    assert "\x1b" not in line and line.count("\n") == 1
    assert "1/\\x1b]0;owned\\x07 " in line and "[bad\\npath\\x1b[2J]" in line


def test_status_says_whether_ebpf_is_up_and_why_not():
    up = cli.format_status({"ebpf": {"up": True, "tracked": 2, "seconds": 0.4,
                                     "headers": "/usr/src/h"}})
    assert "ebpf            up (2 containers tracked, loaded in 0.4 s, headers /usr/src/h)" in up
    off = cli.format_status({"ebpf": {"up": False, "reason": "bcc not importable: x"}})
    assert "ebpf            off: bcc not importable: x\n" in off
