"""interceptd/metrics.py without a kernel: the declarations, the collector over fake
sources, the README's generated table and the Grafana dashboard's queries."""

import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from interceptd import metrics
from interceptd.events import Counters, EventBus
from interceptd.tally import DURATION_BUCKETS_NS, CallTally, Histogram

ROOT = Path(__file__).resolve().parents[2]


def test_declarations_follow_the_naming_model():
    names = [s.name for s in metrics.SERIES]
    assert len(names) == len(set(names))
    for s in metrics.SERIES:
        assert re.fullmatch(r"interceptd_[a-z0-9_]+", s.name), s.name
        assert s.help.endswith("."), s.name
        assert (s.kind == "counter") == s.name.endswith("_total"), s.name
        if s.kind == "histogram":
            assert s.name.endswith("_seconds"), s.name
        assert "pid" not in s.labels, s.name


def test_readme_table_is_generated_from_the_module():
    readme = (ROOT / "README.md").read_text()
    assert metrics.readme_table(readme) == metrics.markdown(), (
        "README's metrics table is stale: python -m interceptd.metrics --update-readme README.md")


class FakeChannel:
    def __init__(self, **stats):
        self._stats = {k: 0 for k in ("fast", "python", "overflow", "native", "native_table")}
        self._stats.update(stats)
        self.closed = False

    def stats(self):
        return dict(self._stats)


class FakeRegistry:
    def __init__(self, containers):
        self._cs = containers

    def list(self):
        return list(self._cs)

    def __len__(self):
        return len(self._cs)


def scrape(src: metrics.Sources) -> dict:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.Collector(src))
    text = generate_latest(reg).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def samples(fams, family, suffix=""):
    return {tuple(sorted(s.labels.items())): s.value for s in fams[family].samples
            if s.name == family + suffix}


def make_sources(**kw):
    counters = Counters()
    calls = CallTally()
    dispatcher = SimpleNamespace(calls=calls, retired_stats={"fast": 5, "native": 2,
                                                            "native_table": 1},
                                 dropped_decisions=lambda: 7)
    reg = FakeRegistry([SimpleNamespace(channel=FakeChannel(fast=10, python=3, native=1,
                                                            native_table=4))])
    src = metrics.Sources(version="1.2.3", counters=counters, bus=EventBus(),
                          dispatcher=dispatcher, registry=reg, **kw)
    return src, counters, calls


def test_collector_reads_the_daemons_counters_with_bounded_labels():
    src, counters, calls = make_sources()
    counters.inc("listener_errors", "not json", 2)
    counters.inc("listener_errors", "a reason nobody declared")
    counters.inc("containers_attached", "", 3)
    counters.inc("trace_dropped_events", "", 4)
    counters.inc("handler_errors", "internal error")
    loc = calls.local()
    loc.count("python", "sysfs", "value", 2)
    loc.count("fast", "setns", "errno", 3)
    loc.count("python", "syscall_999", "errno")  # a number the table does not know
    loc.count("native", "mount", "errno", 1)
    loc.histogram("python").observe_ns(7_000)
    loc.histogram("python").observe_ns(3_000_000_000)  # beyond the last bucket
    fams, text = scrape(src)

    assert samples(fams, "interceptd_build_info")[(("python", __import__("platform")
                                                     .python_version()), ("version", "1.2.3"))] == 1
    rej = samples(fams, "interceptd_listener_rejects", "_total")
    assert rej[(("reason", "not json"),)] == 2
    assert rej[(("reason", "other"),)] == 1
    assert all(dict(k)["reason"] in (*metrics.LISTENER_REJECT_REASONS, "other") for k in rej)
    n = samples(fams, "interceptd_notifications", "_total")
    assert n[(("path", "python"), ("syscall", "sysfs"), ("verdict", "value"))] == 2
    assert n[(("path", "fast"), ("syscall", "setns"), ("verdict", "errno"))] == 3
    assert n[(("path", "python"), ("syscall", "other"), ("verdict", "errno"))] == 1
    esc = samples(fams, "interceptd_escape_attempts", "_total")
    assert esc[(("kind", "namespace"), ("source", "seccomp"))] == 3
    assert esc[(("kind", "mount"), ("source", "seccomp"))] == 1
    assert esc[(("kind", "ptrace"), ("source", "seccomp"))] == 0
    ch = samples(fams, "interceptd_channel_notifications", "_total")
    # live 10 fast of which 4 by the native helper's table, retired 5 of which 1
    assert ch[(("path", "fast"),)] == (10 - 4) + (5 - 1)
    assert ch[(("path", "native"),)] == (1 + 4) + (2 + 1)
    assert ch[(("path", "python"),)] == 3
    drops = samples(fams, "interceptd_events_dropped", "_total")
    assert drops[(("place", "decision_ring"),)] == 7
    assert set(drops) == {(("place", "subscriber_queue"),), (("place", "decision_ring"),)}
    assert samples(fams, "interceptd_container_attaches", "_total")[()] == 3
    assert samples(fams, "interceptd_errors", "_total")[(("part", "handler"),)] == 1
    h = fams["interceptd_notification_duration_seconds"]
    count = next(s for s in h.samples if s.name.endswith("_count"))
    inf = next(s for s in h.samples if s.labels.get("le") == "+Inf")
    first = next(s for s in h.samples if s.name.endswith("_bucket"))
    assert count.value == inf.value == 2
    assert float(first.labels["le"]) == DURATION_BUCKETS_NS[0] / 1e9 and first.value == 0
    assert samples(fams, "interceptd_bpf_up")[()] == 0
    assert "# HELP interceptd_fuse_requests_total" in text  # declared even before FUSE feeds it


def test_bpf_figures_bounded_by_configured_containers():
    fig = SimpleNamespace(
        up=True, compile_seconds=1.5, tracked=2, lost=3, throttled=5,
        events={"mount": 2, "ptrace": 1},
        counts={("web-1234", ("web",), "getppid"): (100, 0),
                ("db-5678", (), "getppid"): (50, 0),
                ("db-5678", (), "rare_syscall_name"): (1, 1),
                ("web-1234", ("web",), "mount"): (4, 4)})
    src, _, _ = make_sources(bpf=SimpleNamespace(figures=lambda: fig), containers=("web",))
    fams, _ = scrape(src)
    calls = samples(fams, "interceptd_bpf_syscalls", "_total")
    assert calls[(("container", "web"), ("syscall", "getppid"))] == 100
    assert calls[(("container", "other"), ("syscall", "getppid"))] == 50
    assert calls[(("container", "other"), ("syscall", "other"))] == 1
    assert {dict(k)["container"] for k in calls} == {"web", "other"}
    esc = samples(fams, "interceptd_escape_attempts", "_total")
    assert esc[(("kind", "mount"), ("source", "bpf"))] == 4
    ev = samples(fams, "interceptd_bpf_events", "_total")
    assert ev[(("kind", "mount"),)] == 2 and ev[(("kind", "ptrace"),)] == 1
    lost = samples(fams, "interceptd_bpf_lost_events", "_total")
    assert lost[(("reason", "ring_full"),)] == 3 and lost[(("reason", "rate_limit"),)] == 5
    assert samples(fams, "interceptd_bpf_up")[()] == 1


def test_tally_merges_threads_and_keeps_finished_ones():
    t = CallTally()

    def work():
        loc = t.local()
        for _ in range(1000):
            loc.count("python", "sysfs", "value")
            loc.histogram("python").observe_ns(4_000)
        loc.release()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    live = t.local()
    live.count("fast", "getppid", "value", 5)
    for th in threads:
        th.join()
    calls, hist = t.snapshot()
    assert calls[("python", "sysfs", "value")] == 4000
    assert calls[("fast", "getppid", "value")] == 5
    assert hist["python"].cumulative()[-1] == 4000
    assert hist["python"].sum_ns == 4000 * 4000


def test_histogram_bucket_edges():
    h = Histogram()
    h.observe_ns(DURATION_BUCKETS_NS[0])  # le is inclusive
    h.observe_ns(DURATION_BUCKETS_NS[0] + 1)
    assert h.counts[0] == 1 and h.counts[1] == 1


def exported_names() -> set[str]:
    out = set(metrics.PROCESS_SERIES) | {"process_cpu_seconds_total", "up"}
    for s in metrics.SERIES:
        out.add(s.name)
        if s.kind == "histogram":
            out |= {s.name + x for x in ("_bucket", "_sum", "_count")}
    return out


def test_dashboard_queries_name_exported_series():
    dash = json.loads((ROOT / "packaging/grafana/interceptd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    known = exported_names()
    for expr in exprs:
        names = set(re.findall(r"\b((?:interceptd|process)_[a-z0-9_]+)", expr))
        assert names, f"query names no series: {expr}"
        assert names <= known, f"{expr}: unknown {names - known}"
    # Every interceptd_ family is on the dashboard at least once.
    used = {n for e in exprs for n in re.findall(r"\binterceptd_[a-z0-9_]+", e)}
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = {s.name for s in metrics.SERIES} - base - {
        "interceptd_build_info", "interceptd_up_seconds", "interceptd_events_published_total",
        "interceptd_trace_clients", "interceptd_channel_notifications_total",
        "interceptd_notify_overflows_total", "interceptd_container_attaches_total",
        "interceptd_container_detaches_total", "interceptd_bpf_compile_seconds",
        "interceptd_bpf_tracked_cgroups", "interceptd_fuse_request_duration_seconds"}
    assert not missing, f"series not on the dashboard: {missing}"


@pytest.mark.parametrize("configured,expect", [(("web",), "web"), (("db",), "other"),
                                               (("web-12",), "web-12")])
def test_container_label(configured, expect):
    assert metrics.container_label("web-1234", (), configured) == expect


def test_fuse_figures_from_the_servers_stats():
    hist = [0] * 20
    hist[0], hist[3], hist[19] = 2, 1, 1  # < 1 us, < 8 us, more than 2**18 us
    stats = {"requests": 9, "files": {
        "proc/meminfo": {"opens": 3, "reads": 1, "open_ns": 600_000_000, "read_ns": 1000,
                         "hist": hist},
        "not/an/emulated/file": {"opens": 1, "reads": 0, "open_ns": 0, "read_ns": 0,
                                 "hist": [0] * 20}}}
    src, _, _ = make_sources(fuse=metrics.fuse_source(lambda: stats))
    fams, _ = scrape(src)
    assert samples(fams, "interceptd_fuse_requests", "_total") == {
        (("file", "/proc/meminfo"),): 4, (("file", "other"),): 1}
    dur = "interceptd_fuse_request_duration_seconds"
    buckets = {s.labels["le"]: s.value for s in fams[dur].samples
               if s.name == dur + "_bucket" and s.labels["file"] == "/proc/meminfo"}
    assert buckets["1e-06"] == 2 and buckets["4e-06"] == 2 and buckets["8e-06"] == 3
    assert buckets["0.262144"] == 3 and buckets["+Inf"] == 4
    assert samples(fams, dur, "_sum")[(("file", "/proc/meminfo"),)] == pytest.approx(0.600001)
