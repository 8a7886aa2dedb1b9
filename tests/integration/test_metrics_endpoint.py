"""/metrics of a real daemon serving real containers, checked by promtool,
prometheus-client's parser and a real Prometheus server; the shipped
packaging/prometheus files checked by promtool."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from interceptd import metrics
from tests.harness import Runtime

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "packaging" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metrics_daemon(daemon_factory, **kw):
    port = free_port()
    d = daemon_factory(
        rules=[{"syscall": "setns", "action": "errno", "errno": 1}],
        sections={"handlers": {"modules": ["tests.harness.handlers"]}},
        args=["--metrics-address", f"127.0.0.1:{port}"], **kw)
    return d, f"http://127.0.0.1:{port}/metrics"


def sample(fams: dict, family: str, name: str, **labels: str) -> float | None:
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_metrics_of_a_real_daemon(runtime: Runtime, bundle_factory, daemon_factory, new_id):
    d, url = metrics_daemon(daemon_factory)
    b = bundle_factory(args=["sh", "-c", "sys sysfs 3; sys setns 0 0; sys setns 0 0"],
                       notify=["sysfs", "setns"], listener_path=d.listener_path)
    res = runtime.run(b, new_id("metrics")).check()
    assert res.stdout.split() == ["ret=4242", "errno=0", "ret=-1", "errno=1", "ret=-1", "errno=1"]

    # The fast path's records reach the tally through the 75 ms pump.
    deadline = time.monotonic() + 5
    while True:
        text = get(url)
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        fast = sample(fams, "interceptd_notifications", "interceptd_notifications_total",
                      path="fast", syscall="setns", verdict="errno")
        if fast == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert fast == 2
    assert sample(fams, "interceptd_notifications", "interceptd_notifications_total",
                  path="python", syscall="sysfs", verdict="value") == 1
    assert sample(fams, "interceptd_escape_attempts", "interceptd_escape_attempts_total",
                  kind="namespace", source="seccomp") == 2
    assert sample(fams, "interceptd_notification_duration_seconds",
                  "interceptd_notification_duration_seconds_count", path="python") == 1
    assert sample(fams, "interceptd_container_attaches", "interceptd_container_attaches_total"
                  ) == 1
    assert sample(fams, "process_resident_memory_bytes", "process_resident_memory_bytes") > 0
    # The FUSE server's figures, per emulated file: a reader in no container is
    # answered EIO, which counts as a request (the histogram times served ones).
    fs = d.control("status")["emulation"]["fs"]
    with contextlib.suppress(OSError), open(f"{fs}/proc/meminfo", "rb") as f:
        f.read()
    fams = {f.name: f for f in text_string_to_metric_families(get(url))}
    assert sample(fams, "interceptd_fuse_requests", "interceptd_fuse_requests_total",
                  file="/proc/meminfo") >= 1, fams["interceptd_fuse_requests"].samples
    assert any(s.name.endswith("_count") and s.labels["file"] == "/proc/meminfo"
               for s in fams["interceptd_fuse_request_duration_seconds"].samples)
    assert {s.labels["file"] for s in fams["interceptd_fuse_requests"].samples} <= set(
        metrics.fuse_files())

    # Every declared series is there (HELP and TYPE even when it has no sample yet).
    for s in metrics.SERIES:
        assert s.exposed in fams, f"{s.name} missing from /metrics"
        assert f"# HELP {s.name} " in text or f"# HELP {s.exposed} " in text
    # No label value outside the declared lists, no pid label.
    for fam in fams.values():
        for smp in fam.samples:
            assert "pid" not in smp.labels

    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        proc.stdout + proc.stderr)


def test_metrics_off_serves_nothing(daemon_factory):
    port = free_port()
    d = daemon_factory(args=["--metrics-address", "off"])
    assert d.control("status")["metrics_address"] == "off"
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{port}/metrics", timeout=1)


def test_metrics_port_taken_costs_only_the_metrics(daemon_factory, runtime_factory,
                                                    bundle_factory, new_id):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 7}],
                           args=["--metrics-address", f"127.0.0.1:{port}"])
        assert "metrics endpoint not started" in d.log()
        b = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                           listener_path=d.listener_path)
        res = runtime_factory("runc").run(b, new_id("noport")).check()
        assert res.stdout.strip() == "ret=7 errno=0"


def test_a_stalled_metrics_client_does_not_block_scrapes(daemon_factory):
    d, url = metrics_daemon(daemon_factory)
    port = int(url.split(":")[2].split("/")[0])
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        for s in stalled:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        t0 = time.monotonic()
        assert "interceptd_build_info" in get(url)
        assert time.monotonic() - t0 < 2
    finally:
        for s in stalled:
            s.close()
    assert d.alive()


def test_shipped_prometheus_files_pass_promtool():
    for args in (["check", "config", str(PROM_DIR / "prometheus.yml")],
                 ["check", "rules", str(PROM_DIR / "interceptd-alerts.yml")],
                 ["test", "rules", str(PROM_DIR / "interceptd-alerts.test.yml")]):
        proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                              cwd=PROM_DIR)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout + proc.stderr


def test_alert_rules_name_exported_series():
    rules = yaml.safe_load((PROM_DIR / "interceptd-alerts.yml").read_text())
    names = {s.name for s in metrics.SERIES}
    wanted = {"InterceptdDown", "InterceptdEscapeAttempt", "InterceptdListenerRejects",
              "InterceptdBpfLostEvents"}
    seen = set()
    for group in rules["groups"]:
        for r in group["rules"]:
            seen.add(r["alert"])
            for name in re.findall(r"\binterceptd_[a-z0-9_]+", r["expr"]):
                assert name in names, f"{r['alert']}: {name} is not exported"
    assert wanted <= seen


def test_a_real_prometheus_scrapes_the_daemon(daemon_factory, workdir):
    _d, url = metrics_daemon(daemon_factory)
    target = url.removeprefix("http://").removesuffix("/metrics")
    # The shipped config, pointed at this daemon's port and scraping every second.
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "interceptd")
    job["static_configs"] = [{"targets": [target]}]
    conf = workdir / "prometheus.yml"
    conf.write_text(yaml.safe_dump(cfg))
    port = free_port()
    storage = workdir / "tsdb"
    log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 (closed below)
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={storage}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query?"
        deadline = time.monotonic() + 60
        result: list = []
        while time.monotonic() < deadline and prom.poll() is None:
            try:
                ans = json.loads(get(api + urllib.parse.urlencode(
                    {"query": 'interceptd_build_info{job="interceptd"}'})))
                result = ans["data"]["result"]
                if result:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert prom.poll() is None, (workdir / "prometheus.log").read_text()
        assert result, (workdir / "prometheus.log").read_text()
        assert result[0]["metric"]["version"] and result[0]["value"][1] == "1"
        up = json.loads(get(api + urllib.parse.urlencode({"query": 'up{job="interceptd"}'})))
        assert up["data"]["result"][0]["value"][1] == "1"
        rules = json.loads(get(f"http://127.0.0.1:{port}/api/v1/rules"))
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert "InterceptdEscapeAttempt" in loaded
    finally:
        os.kill(prom.pid, signal.SIGTERM)
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(prom.pid, signal.SIGKILL)
            prom.wait(5)
        log.close()
        shutil.rmtree(storage, ignore_errors=True)
