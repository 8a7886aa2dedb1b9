"""Every Prometheus series interceptd exports, declared once, and the exporter.

Naming follows Tetragon's model: `interceptd_<area>_<what>[_total]`, base
units (seconds, bytes) in the name, help text on every series, and label
values only from fixed lists (anything else is reported as "other"), so no
container can grow the number of series: no pid labels, and per-container
labels only for the containers an operator lists in `[metrics] containers`.

The daemon keeps its figures where they are made (events.Counters, the
dispatcher's call tally, the engine's and bus's drop counts, the channels'
counts, the eBPF maps); `Collector` reads them when Prometheus scrapes, so
nothing is counted twice and no hot path pays for the exporter.

`python -m interceptd.metrics --markdown` prints the README's table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from interceptd import syscalls
from interceptd.tally import DURATION_BUCKETS_NS

if TYPE_CHECKING:
    from interceptd.dispatch import Dispatcher
    from interceptd.ebpf import BpfLayer
    from interceptd.events import Counters, EventBus
    from interceptd.registry import Registry

log = logging.getLogger("interceptd.metrics")

PREFIX = "interceptd_"
OTHER = "other"

PATHS = ("fast", "python", "native")
VERDICTS = ("continue", "errno", "value", "fd")
# listener.py's ListenerReject reasons.
LISTENER_REJECT_REASONS = (
    "attach failed", "bad message", "empty message", "internal error", "io error",
    "missing field", "no fd", "not a seccomp fd", "not json", "several fds", "shutting down",
    "target gone", "timeout", "too large", "too many connections", "unknown container",
    "duplicate id", "accept failed",
)
# subscriber_queue: a slow subscriber's (a trace client's) full queue, as the bus counts
# it (the control socket's own trace_dropped_events counts the same drops again);
# decision_ring: the C rings of fast-path and native-helper records.
DROP_PLACES = ("subscriber_queue", "decision_ring")
ERROR_KINDS = ("worker", "handler", "respond", "pump", "control")

# Syscalls that read as an attempt to leave the container when refused; the
# kind is the label (a fixed list), the syscalls are what eBPF streams as events.
ESCAPE_KINDS: dict[str, tuple[str, ...]] = {
    "mount": ("mount", "umount2"),
    "mount_api": ("open_tree", "open_tree_attr", "move_mount", "fsopen", "fsconfig",
                  "fsmount", "fspick", "mount_setattr"),
    "ptrace": ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd"),
    "namespace": ("setns", "unshare"),
    "bpf": ("bpf", "perf_event_open"),
    "module": ("init_module", "finit_module", "delete_module"),
    "keyring": ("keyctl", "add_key", "request_key"),
    "file_handle": ("open_by_handle_at", "name_to_handle_at"),
    "io_uring": ("io_uring_setup",),
}
SENSITIVE_SYSCALLS: tuple[str, ...] = tuple(s for v in ESCAPE_KINDS.values() for s in v)
KIND_OF_SYSCALL: dict[str, str] = {s: k for k, v in ESCAPE_KINDS.items() for s in v}
ESCAPE_SOURCES = ("seccomp", "bpf")

# The syscalls eBPF counts get their own label value for; everything else of
# the ~460 is "other" (the control socket's `stats` shows them all).
BPF_SYSCALL_LABELS: tuple[str, ...] = (
    "read", "write", "openat", "close", "mmap", "munmap", "mprotect", "brk", "ioctl",
    "fstat", "newfstatat", "statx", "lseek", "getdents64", "futex", "clone", "clone3",
    "execve", "execveat", "exit_group", "wait4", "kill", "socket", "connect", "accept4",
    "sendto", "recvfrom", "getppid", "getpid", "nanosleep", "clock_nanosleep", "epoll_wait",
    "poll", "ppoll", "pipe2", "dup3", "rt_sigaction", "sysinfo", "sysfs", "chroot",
    "pivot_root", "sethostname", "reboot", "swapon", *SENSITIVE_SYSCALLS,
)
MAX_LABELLED_CONTAINERS = 32


@dataclass(frozen=True)
class Series:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    source: str = "daemon"  # where the figure comes from (README); "eBPF", "FUSE"

    @property
    def exposed(self) -> str:
        """The family name as scraped (a counter's _total is part of its name here)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


SERIES: tuple[Series, ...] = (
    Series("interceptd_build_info", "gauge",
           "Always 1; the version and Python running the daemon.", ("version", "python")),
    Series("interceptd_up_seconds", "gauge", "Seconds since the daemon started."),
    Series("interceptd_notifications_total", "counter",
           "Seccomp notifications answered, by path (fast: the C verdict table; native: "
           "the native mount helper; python: a policy handler), syscall and verdict.",
           ("path", "syscall", "verdict")),
    Series("interceptd_notification_duration_seconds", "histogram",
           "Time from receiving a notification to answering it, by path (the C paths' "
           "records carry their receive and send times).", ("path",)),
    Series("interceptd_channel_notifications_total", "counter",
           "Notifications per path as the C channels count them (includes decisions "
           "whose event record was dropped).", ("path",)),
    Series("interceptd_native_mounts_total", "counter",
           "Mount-family calls the native helper performed itself."),
    Series("interceptd_notify_overflows_total", "counter",
           "Python-path notifications refused (EAGAIN) because a container's queue was full."),
    Series("interceptd_containers", "gauge", "Containers attached now."),
    Series("interceptd_container_attaches_total", "counter", "Containers attached since start."),
    Series("interceptd_container_detaches_total", "counter", "Containers detached since start."),
    Series("interceptd_listener_rejects_total", "counter",
           "Notify fds the listener refused, by reason.", ("reason",)),
    Series("interceptd_events_dropped_total", "counter",
           "Event records lost (the decisions were made and answered), by place: a slow "
           "subscriber's queue (a trace client), the C decision rings.", ("place",)),
    Series("interceptd_events_published_total", "counter", "Events published on the bus."),
    Series("interceptd_trace_clients", "gauge", "Subscribers of the event bus (traces)."),
    Series("interceptd_errors_total", "counter",
           "Internal errors, by part (each also logged).", ("part",)),
    Series("interceptd_escape_attempts_total", "counter",
           "Refused calls of the sensitive set, by kind and by who saw them (seccomp: the "
           "daemon refused it; bpf: the call failed as eBPF saw its exit).",
           ("kind", "source")),
    Series("interceptd_bpf_up", "gauge",
           "1 when the eBPF layer is loaded (its programs attached while a container is "
           "tracked), else 0 (see interceptctl probe)."),
    Series("interceptd_bpf_compile_seconds", "gauge",
           "How long the eBPF loader took, from its start to the programs loaded and "
           "checked.", source="eBPF"),
    Series("interceptd_bpf_tracked_cgroups", "gauge",
           "Container cgroups the eBPF counters follow.", source="eBPF"),
    Series("interceptd_bpf_syscalls_total", "counter",
           "Syscalls of attached containers as eBPF counts them, by container (configured "
           "set, else other) and syscall (fixed set, else other).",
           ("container", "syscall"), source="eBPF"),
    Series("interceptd_bpf_syscall_errors_total", "counter",
           "Of those, the calls that returned an error.", ("container", "syscall"),
           source="eBPF"),
    Series("interceptd_bpf_events_total", "counter",
           "Sensitive-syscall events eBPF streamed, by kind.", ("kind",), source="eBPF"),
    Series("interceptd_bpf_lost_events_total", "counter",
           "eBPF events not delivered, by reason (ring_full: the daemon fell behind; "
           "rate_limit: a container streamed more than 2,000 a second).", ("reason",),
           source="eBPF"),
    Series("interceptd_container_network_interfaces", "gauge",
           "Interfaces in a configured container's network namespace, loopback aside.",
           ("container",)),
    Series("interceptd_container_network_bytes_total", "counter",
           "Bytes through a configured container's interfaces (loopback aside), by "
           "direction (rx, tx), read in its network namespace.", ("container", "direction")),
    Series("interceptd_container_network_packets_total", "counter",
           "Packets through a configured container's interfaces, by direction.",
           ("container", "direction")),
    Series("interceptd_container_network_drops_total", "counter",
           "Packets its interfaces dropped, by direction.", ("container", "direction")),
    Series("interceptd_fuse_requests_total", "counter",
           "Opens and reads of emulated /proc and /sys files, by file.", ("file",),
           source="FUSE"),
    Series("interceptd_fuse_request_duration_seconds", "histogram",
           "Time to serve one read of an emulated file, by file.", ("file",), source="FUSE"),
)
BY_NAME: dict[str, Series] = {s.name: s for s in SERIES}
# prometheus_client's own process collector (process_cpu_seconds_total, ...).
PROCESS_SERIES = ("process_cpu_seconds", "process_resident_memory_bytes",
                  "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                  "process_start_time_seconds")


def fuse_files() -> tuple[str, ...]:
    try:
        from interceptd.emulation.registry import emulated_paths
    except ImportError:  # the emulation package is optional
        return ()
    return emulated_paths()


# The FUSE server's latency buckets (csrc/fusefs.h): hist[0] < 1 us, hist[i] < 2**i us,
# the last one: more.
FUSE_BUCKETS_NS = tuple(1000 << i for i in range(19))


@dataclass
class FuseHistogram:
    counts: list[int]
    sum_ns: int
    bounds_ns: tuple[int, ...] = FUSE_BUCKETS_NS

    def cumulative(self) -> list[int]:
        out, n = [], 0
        for c in self.counts:
            n += c
            out.append(n)
        return out


def fuse_source(stats: Callable[[], Mapping[str, Any]]) -> Callable[[], dict[str, Any]]:
    """The FUSE server's per-file figures (core.FuseServer.stats()["files"]) as the
    collector reads them: {"/proc/meminfo": (opens + reads, FuseHistogram)}."""
    def read() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path, d in stats().get("files", {}).items():
            hist = FuseHistogram(list(d["hist"]), d["open_ns"] + d["read_ns"])
            out["/" + path.lstrip("/")] = (d["opens"] + d["reads"], hist)
        return out
    return read


def bounded(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else OTHER


# -- what the collector reads --------------------------------------------------


@dataclass
class Sources:
    """Callables the collector reads at scrape time; each may be missing."""

    version: str = "0.0.0"
    started: float = 0.0  # time.monotonic() at start
    counters: Counters | None = None
    bus: EventBus | None = None
    dispatcher: Dispatcher | None = None
    registry: Registry | None = None
    bpf: BpfLayer | None = None
    fuse: Callable[[], Mapping[str, tuple[int, FuseHistogram | None]]] | None = None
    # {configured container label: {rx_bytes, tx_bytes, ..., interfaces}} (netview.py)
    network: Callable[[], Mapping[str, Mapping[str, int]]] | None = None
    containers: tuple[str, ...] = ()  # [metrics] containers: id prefixes or names
    clock: Callable[[], float] = field(default=lambda: __import__("time").monotonic())


def container_label(cid: str, names: Iterable[str], configured: tuple[str, ...]) -> str:
    """The configured entry naming this container (its id prefix or one of its names)."""
    for want in configured:
        if cid.startswith(want) or want in names:
            return want
    return OTHER


class Collector:
    """A prometheus_client collector over the daemon's own counters."""

    def __init__(self, src: Sources) -> None:
        self.src = src
        self._syscalls = frozenset(syscalls.NUMBERS)
        self._bpf_syscalls = frozenset(BPF_SYSCALL_LABELS)
        self._fuse_files = frozenset(fuse_files())

    def describe(self) -> list[Any]:
        return []  # no describe-time collection: the registry then calls collect() only on scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        src = self.src
        fams: dict[str, Any] = {}
        for s in SERIES:
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                   "histogram": HistogramMetricFamily}[s.kind]
            fams[s.name] = cls(s.exposed, s.help, labels=list(s.labels))

        fams["interceptd_build_info"].add_metric([src.version, platform.python_version()], 1)
        fams["interceptd_up_seconds"].add_metric([], max(0.0, src.clock() - src.started))
        snap: dict[str, dict[str, int]] = src.counters.snapshot() if src.counters else {}
        self._daemon_counters(fams, snap)
        self._calls(fams)
        self._channels(fams)
        self._drops(fams)
        self._bpf(fams)
        self._network(fams)
        self._fuse(fams)
        yield from fams.values()

    def _daemon_counters(self, fams: dict[str, Any], snap: dict[str, dict[str, int]]) -> None:
        def total(name: str) -> int:
            return sum(snap.get(name, {}).values())

        reg = self.src.registry
        fams["interceptd_containers"].add_metric([], len(reg) if reg is not None else 0)
        fams["interceptd_container_attaches_total"].add_metric([], total("containers_attached"))
        fams["interceptd_container_detaches_total"].add_metric([], total("containers_detached"))
        rejects = dict.fromkeys(LISTENER_REJECT_REASONS, 0)
        rejects[OTHER] = 0
        for reason, n in snap.get("listener_errors", {}).items():
            rejects[bounded(reason, LISTENER_REJECT_REASONS)] += n
        for reason, n in rejects.items():
            fams["interceptd_listener_rejects_total"].add_metric([reason], n)
        for part in ERROR_KINDS:
            fams["interceptd_errors_total"].add_metric([part], total(f"{part}_errors"))

    def _calls(self, fams: dict[str, Any]) -> None:
        d = self.src.dispatcher
        calls, durations = d.calls.snapshot() if d is not None else ({}, {})
        merged: dict[tuple[str, str, str], int] = {}
        escapes = {k: 0 for k in ESCAPE_KINDS}
        for (path, name, verdict), n in calls.items():
            key = (bounded(path, PATHS), bounded(name, self._syscalls),
                   bounded(verdict, VERDICTS))
            merged[key] = merged.get(key, 0) + n
            kind = KIND_OF_SYSCALL.get(name)
            if kind is not None and verdict == "errno":
                escapes[kind] += n
        for key, n in sorted(merged.items()):
            fams["interceptd_notifications_total"].add_metric(list(key), n)
        for kind, n in escapes.items():
            fams["interceptd_escape_attempts_total"].add_metric([kind, "seccomp"], n)
        for path in PATHS:
            h = durations.get(path)
            if h is None:
                continue
            cum = h.cumulative()
            buckets = [(_le(b), c) for b, c in zip(DURATION_BUCKETS_NS, cum, strict=False)]
            buckets.append(("+Inf", cum[-1]))
            fams["interceptd_notification_duration_seconds"].add_metric(
                [path], buckets, h.sum_ns / 1e9)

    def _channels(self, fams: dict[str, Any]) -> None:
        d, reg = self.src.dispatcher, self.src.registry
        totals: dict[str, int] = dict(d.retired_stats) if d is not None else {}
        if reg is not None:
            for c in reg.list():
                ch = c.channel
                if ch is None or ch.closed:
                    continue  # its final figures are in retired_stats
                with contextlib.suppress(Exception):
                    for k, v in ch.stats().items():
                        totals[k] = totals.get(k, 0) + v
        fast_all, native_table = totals.get("fast", 0), totals.get("native_table", 0)
        per_path = {"fast": fast_all, "python": totals.get("python", 0),
                    "native": totals.get("native", 0)}
        # `fast` includes the native helper's table answers; keep them apart.
        per_path["fast"] = max(0, fast_all - native_table)
        per_path["native"] += native_table
        for path in PATHS:
            fams["interceptd_channel_notifications_total"].add_metric([path], per_path[path])
        fams["interceptd_native_mounts_total"].add_metric([], totals.get("native", 0))
        fams["interceptd_notify_overflows_total"].add_metric([], totals.get("overflow", 0))

    def _drops(self, fams: dict[str, Any]) -> None:
        bus, d = self.src.bus, self.src.dispatcher
        drops = {
            "subscriber_queue": bus.dropped if bus is not None else 0,
            "decision_ring": d.dropped_decisions() if d is not None else 0,
        }
        for place in DROP_PLACES:
            fams["interceptd_events_dropped_total"].add_metric([place], drops[place])
        fams["interceptd_events_published_total"].add_metric(
            [], bus.published if bus is not None else 0)
        fams["interceptd_trace_clients"].add_metric(
            [], bus.subscribers if bus is not None else 0)

    def _bpf(self, fams: dict[str, Any]) -> None:
        bpf = self.src.bpf
        fig = bpf.figures() if bpf is not None else None
        fams["interceptd_bpf_up"].add_metric([], 1 if fig is not None and fig.up else 0)
        if fig is None:
            return
        fams["interceptd_bpf_compile_seconds"].add_metric([], fig.compile_seconds)
        fams["interceptd_bpf_tracked_cgroups"].add_metric([], fig.tracked)
        calls: dict[tuple[str, str], int] = {}
        errors: dict[tuple[str, str], int] = {}
        escapes = {k: 0 for k in ESCAPE_KINDS}
        for (cid, names, name), (n, err) in fig.counts.items():
            key = (container_label(cid, names, self.src.containers),
                   bounded(name, self._bpf_syscalls))
            calls[key] = calls.get(key, 0) + n
            errors[key] = errors.get(key, 0) + err
            kind = KIND_OF_SYSCALL.get(name)
            if kind is not None:
                escapes[kind] += err
        for key, n in sorted(calls.items()):
            fams["interceptd_bpf_syscalls_total"].add_metric(list(key), n)
            fams["interceptd_bpf_syscall_errors_total"].add_metric(list(key), errors[key])
        for kind, n in escapes.items():
            fams["interceptd_escape_attempts_total"].add_metric([kind, "bpf"], n)
        events = {k: 0 for k in ESCAPE_KINDS}
        for name, n in fig.events.items():
            kind = KIND_OF_SYSCALL.get(name)
            if kind is not None:
                events[kind] += n
        for kind, n in events.items():
            fams["interceptd_bpf_events_total"].add_metric([kind], n)
        fams["interceptd_bpf_lost_events_total"].add_metric(["ring_full"], fig.lost)
        fams["interceptd_bpf_lost_events_total"].add_metric(
            ["rate_limit"], fig.throttled)

    def _network(self, fams: dict[str, Any]) -> None:
        if self.src.network is None or not self.src.containers:
            return
        try:
            sums = self.src.network()
        except Exception:  # a scrape never fails for one container's namespace
            log.exception("network view failed")
            return
        for label, t in sorted(sums.items()):
            if label not in self.src.containers:
                continue  # bounded: configured containers only
            fams["interceptd_container_network_interfaces"].add_metric(
                [label], t.get("interfaces", 0))
            for d in ("rx", "tx"):
                fams["interceptd_container_network_bytes_total"].add_metric(
                    [label, d], t.get(f"{d}_bytes", 0))
                fams["interceptd_container_network_packets_total"].add_metric(
                    [label, d], t.get(f"{d}_packets", 0))
                fams["interceptd_container_network_drops_total"].add_metric(
                    [label, d], t.get(f"{d}_dropped", 0))

    def _fuse(self, fams: dict[str, Any]) -> None:
        if self.src.fuse is None:
            return
        for path, (n, hist) in sorted(self.src.fuse().items()):
            label = bounded(path, self._fuse_files)
            fams["interceptd_fuse_requests_total"].add_metric([label], n)
            if hist is not None:
                cum = hist.cumulative()
                buckets = [(_le(b), c) for b, c in zip(hist.bounds_ns, cum, strict=False)]
                buckets.append(("+Inf", cum[-1]))
                fams["interceptd_fuse_request_duration_seconds"].add_metric(
                    [label], buckets, hist.sum_ns / 1e9)


def _le(ns: int) -> str:
    return repr(ns / 1e9)


# -- the README's table --------------------------------------------------------------


def markdown() -> str:
    lines = ["| series | type | labels | fed by | meaning |", "|---|---|---|---|---|"]
    for s in SERIES:
        labels = ", ".join(f"`{x}`" for x in s.labels) or "-"
        lines.append(f"| `{s.name}` | {s.kind} | {labels} | {s.source} | {s.help} |")
    lines.append("| `process_*` | (prometheus-client) | - | daemon | CPU seconds, resident "
                 "and virtual memory, open fds, start time of the daemon's process. |")
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- metrics table: generated by `python -m interceptd.metrics --markdown` -->"
README_END = "<!-- end of metrics table -->"


def readme_table(readme: str) -> str:
    """The generated table as it stands in the README (between the markers)."""
    start = readme.index(README_BEGIN) + len(README_BEGIN)
    return readme[start:readme.index(README_END, start)].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m interceptd.metrics")
    p.add_argument("--markdown", action="store_true", help="print the README's metrics table")
    p.add_argument("--update-readme", metavar="README", help="rewrite the table in README")
    args = p.parse_args(argv)
    if args.update_readme:
        with open(args.update_readme) as f:
            text = f.read()
        old = readme_table(text)
        text = text.replace(old, markdown(), 1)
        with open(args.update_readme, "w") as f:
            f.write(text)
        return 0
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
