"""The eBPF layer with real containers: per-container syscall counts, sensitive-call
events on the trace next to seccomp's, and a daemon that runs on without bcc."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import Runtime

REPO = Path(__file__).resolve().parents[2]
CTL = [sys.executable, "-m", "interceptd.cli"]
EBPF = {"ebpf": {"enabled": True}}


def wait_ebpf(d, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = d.control("status")["ebpf"]
        if st["up"] or st.get("reason", "starting") != "starting":
            return st
        assert time.monotonic() < deadline, "eBPF layer neither up nor refused"
        time.sleep(0.1)


def stats(d) -> dict:
    out = subprocess.run([*CTL, "--state-dir", str(d.state_dir), "stats", "-o", "json"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


def test_getppid_counted_for_its_container_only(runtime: Runtime, bundle_factory,
                                                 daemon_factory, new_id):
    d = daemon_factory(sections=EBPF)
    st = wait_ebpf(d)
    assert st["up"], st
    busy = bundle_factory(args=["sh", "-c", "sleep 0.3; sys -n 10000 getppid; sleep 60"],
                          notify=["sysfs"], listener_path=d.listener_path)
    idle = bundle_factory(args=["sleep", "60"], notify=["sysfs"], listener_path=d.listener_path)
    a, b = new_id("busy"), new_id("idle")
    with runtime.started(busy, a), runtime.started(idle, b):
        d.wait_container(a)
        d.wait_container(b)
        deadline = time.monotonic() + 15
        while True:
            cs = stats(d)["containers"]
            n = cs.get(a, {}).get("getppid", [0, 0])[0]
            if n >= 10000 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert n >= 10000, cs.get(a)
        assert n < 10100, cs.get(a)  # the shell's own few, no more
        assert cs.get(b, {}).get("getppid", [0, 0])[0] <= 5, cs.get(b)
        assert b in cs  # tracked, just quiet
        assert d.control("status")["ebpf"]["attached"] == ["sched_process_exit", "sys_exit"]
        verbose = subprocess.run([*CTL, "--state-dir", str(d.state_dir), "containers", "-v"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
        block = verbose.split(f"\n{a}\n", 1)[1].split("\n\n", 1)[0]
        assert "  cgroup v2   /" in block and "top: getppid " in block, verbose
        table = subprocess.run([*CTL, "--state-dir", str(d.state_dir), "stats", "-n", "1"],
                               capture_output=True, text=True, timeout=30, check=True).stdout
        assert f"{a}  calls " in table and "getppid" in table


class Trace:
    """`interceptctl trace -o json ...` as a subprocess; lines read with a deadline."""

    def __init__(self, d, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CTL, "--state-dir", str(d.state_dir), "trace", "-o", "json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buf = b""

    def events(self, want: int, timeout: float) -> list[tuple[float, dict]]:
        import os
        import select

        out: list[tuple[float, dict]] = []
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while len(out) < want:
            while b"\n" in self._buf and len(out) < want:
                line, self._buf = self._buf.split(b"\n", 1)
                out.append((time.time(), json.loads(line)))
            left = deadline - time.monotonic()
            if len(out) >= want or left <= 0:
                break
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                break
            data = os.read(fd, 65536)
            if not data:
                break
            self._buf += data
        return out

    def stop(self) -> None:
        self.proc.kill()  # this test's own child, by its pid
        self.proc.wait(10)


def wait_trace_clients(d, n: int) -> None:
    deadline = time.monotonic() + 10
    while d.control("status").get("trace_clients", 0) < n:
        assert time.monotonic() < deadline, "trace client never subscribed"
        time.sleep(0.05)


def test_programs_attached_only_while_a_container_is_tracked(runtime: Runtime,
                                                             bundle_factory, daemon_factory,
                                                             new_id):
    """No container tracked, no program on the syscall tracepoints: the host's
    processes pay nothing for a daemon that watches no container."""
    d = daemon_factory(sections=EBPF)
    st = wait_ebpf(d)
    assert st["up"] and st["attached"] == [] and st["frame_check"] == "ok", st
    b = bundle_factory(args=["sleep", "60"], notify=["sysfs"], listener_path=d.listener_path)
    cid = new_id("once")
    with runtime.started(b, cid):
        d.wait_container(cid)
        assert d.control("status")["ebpf"]["attached"] == ["sched_process_exit", "sys_exit"]
    deadline = time.monotonic() + 10
    while d.control("status")["ebpf"]["attached"]:
        assert time.monotonic() < deadline, "programs still attached after the container left"
        time.sleep(0.05)


def test_mount_and_ptrace_traced_from_both_sources(runtime: Runtime, bundle_factory,
                                                    daemon_factory, new_id):
    import threading

    d = daemon_factory(sections=EBPF)
    assert wait_ebpf(d)["up"]
    cid = new_id("escape")
    every = Trace(d, "--container", cid)
    bpf_only = Trace(d, "--container", cid[:-4], "--source", "bpf", "--comm", "sys")
    seccomp_ptrace = Trace(d, "--source", "seccomp", "--syscall", "ptrace")
    try:
        wait_trace_clients(d, 3)
        b = bundle_factory(
            args=["sh", "-c", "sleep 0.2; sys mount s:none s:/mnt s:tmpfs 0 0; "
                              "sys ptrace 16 4000000 0 0; sleep 1"],
            notify=["mount", "ptrace"], listener_path=d.listener_path)
        done: list = []
        runner = threading.Thread(target=lambda: done.append(runtime.run(b, cid)))
        runner.start()
        try:
            evs = every.events(4, 10)  # read while the container runs: arrival times count
        finally:
            runner.join(40)
        assert done and done[0].rc == 0, done
        got = {(e["source"], e["syscall"]): (t, e) for t, e in evs}
        assert set(got) == {("seccomp", "mount"), ("bpf", "mount"), ("seccomp", "ptrace"),
                            ("bpf", "ptrace")}, [e for _, e in evs]
        for (src, name), (t_recv, e) in got.items():
            assert e["container"] == cid
            assert e["comm"] == "sys" or (src == "seccomp" and e["comm"] == ""), e
            assert 0 <= t_recv - e["time"] < 1.0, (src, name, t_recv - e["time"])
        sm, bm = got[("seccomp", "mount")][1], got[("bpf", "mount")][1]
        # The same call: the daemon refused it, so it never entered; eBPF saw its exit,
        # and its arguments in the registers it was made with.
        assert sm["pid"] == bm["pid"] and sm["args"][3:] == bm["args"][3:] == [0, 0, 0]
        assert sm["args"][:3] == bm["args"][:3] and all(bm["args"][:3])  # the three pointers
        assert sm["verdict"] == bm["verdict"] == "errno" and sm["errno"] == bm["errno"] == 1
        assert (bm.get("details") or {}).get("args_seen") is not False
        assert sm["reason"].startswith("mount:")
        sp, bp = got[("seccomp", "ptrace")][1], got[("bpf", "ptrace")][1]
        # Let through by the daemon (no such pid): eBPF saw it enter and fail.
        assert sp["pid"] == bp["pid"] and sp["args"] == bp["args"] == [16, 4000000, 0, 0, 0, 0]
        assert sp["verdict"] == "continue"
        assert bp["verdict"] == "errno" and bp["errno"] == 3  # ESRCH
        # The filters select what they say.
        only = [e for _, e in bpf_only.events(2, 3)]
        assert {e["syscall"] for e in only} == {"mount", "ptrace"}
        assert all(e["source"] == "bpf" and e["comm"] == "sys" for e in only)
        pt = [e for _, e in seccomp_ptrace.events(2, 1)]
        assert [(e["source"], e["syscall"]) for e in pt] == [("seccomp", "ptrace")]
        by_pid = Trace(d, "--pid", str(sp["pid"]))
        other_pid = Trace(d, "--pid", str(sp["pid"] + 1_000_000))
        try:
            wait_trace_clients(d, 5)
            b2 = bundle_factory(args=["sys", "ptrace", "16", "4000000", "0", "0"],
                                notify=["ptrace"], listener_path=d.listener_path)
            runtime.run(b2, new_id("pid")).check()
            assert other_pid.events(1, 1) == []
        finally:
            by_pid.stop()
            other_pid.stop()
    finally:
        for t in (every, bpf_only, seccomp_ptrace):
            t.stop()


def test_without_bcc_the_daemon_serves_and_probe_says_why(runtime: Runtime, bundle_factory,
                                                          daemon_factory, new_id, workdir,
                                                          monkeypatch):
    # A `bcc` package that cannot be imported, ahead of Debian's on the path.
    shadow = workdir / "nobcc" / "bcc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('bcc removed for this test')\n")
    env = {"PYTHONPATH": f"{shadow.parent}:{REPO}"}
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))  # the harness puts it after the repo
    d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 9}],
                       sections=EBPF)
    st = wait_ebpf(d)
    assert not st["up"] and "bcc removed for this test" in st["reason"], st
    assert d.log().count("eBPF layer off") == 1
    b = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                       listener_path=d.listener_path)
    assert runtime.run(b, new_id("nobcc")).check().stdout.strip() == "ret=9 errno=0"
    out = subprocess.run([*CTL, "--state-dir", str(d.state_dir), "stats"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert "eBPF layer off: bcc not importable" in out
    probe = subprocess.run([*CTL, "probe", "-o", "json"], capture_output=True, text=True,
                           timeout=60, check=True, env=dict(__import__("os").environ, **env))
    feats = json.loads(probe.stdout)
    assert feats["bcc"] is False and feats["bcc_compile"] is False
    assert "bcc removed for this test" in feats["reasons"]["bcc"]
    assert d.alive()


def test_ebpf_metrics_bounded_and_rate_limited(runtime: Runtime, bundle_factory,
                                               daemon_factory, new_id):
    """A container looping on a failing sensitive call: every call counted under its
    configured label (kept after it is gone), events capped at 2,000 a second with
    the rest counted as lost, and the sibling only under "other"."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.integration.test_metrics_endpoint import free_port, get

    port = free_port()
    loud = new_id("loud")
    d = daemon_factory(sections={**EBPF, "metrics": {"containers": [loud[:8]]}},
                       args=["--metrics-address", f"127.0.0.1:{port}"])
    assert wait_ebpf(d)["up"]
    # The counting starts when the daemon attaches the container (its notify fd
    # arrives, which `runc run` does not wait for): let the attach land first.
    b = bundle_factory(args=["sh", "-c", "sleep 0.3; sys -n 5000 setns -1 0"], notify=["sysfs"],
                       listener_path=d.listener_path)
    assert "errno=9" in runtime.run(b, loud).check().stdout  # EBADF, 5,000 times
    quiet = bundle_factory(args=["sh", "-c", "sleep 0.3; sys -n 300 getppid"], notify=["sysfs"],
                           listener_path=d.listener_path)
    runtime.run(quiet, new_id("quiet")).check()
    time.sleep(0.3)  # the event reader's poll
    fams = {f.name: f for f in text_string_to_metric_families(
        get(f"http://127.0.0.1:{port}/metrics"))}

    def val(family: str, name: str, **labels: str) -> float:
        return sum(s.value for s in fams[family].samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    calls = "interceptd_bpf_syscalls"
    assert val(calls, calls + "_total", container=loud[:8], syscall="setns") >= 5000
    assert val("interceptd_bpf_syscall_errors", "interceptd_bpf_syscall_errors_total",
               container=loud[:8], syscall="setns") >= 5000
    assert val(calls, calls + "_total", container="other", syscall="getppid") >= 300, [
        (s.labels, s.value) for s in fams[calls].samples]
    assert {s.labels["container"] for s in fams[calls].samples} <= {loud[:8], "other"}
    assert val("interceptd_escape_attempts", "interceptd_escape_attempts_total",
               kind="namespace", source="bpf") >= 5000
    events = val("interceptd_bpf_events", "interceptd_bpf_events_total", kind="namespace")
    lost = val("interceptd_bpf_lost_events", "interceptd_bpf_lost_events_total",
               reason="rate_limit")
    assert 1000 <= events <= 4500 and lost >= 500 and events + lost >= 5000, (events, lost)
    assert val("interceptd_bpf_up", "interceptd_bpf_up") == 1
