"""The daemon's eBPF layer: per-container syscall counts and sensitive-call events.

`BpfLayer.start()` returns at once; a thread runs the loader child
(interceptd/ebpf_load.py: bcc compiles and loads bpf/syscalls.bpf.c and hands
over the maps' and programs' fds), so the seccomp listener serves while bcc
works. The programs are attached (raw tracepoints) only while a container is
tracked. Anything missing (bcc, kernel headers, the kernel's permission) leaves
the layer down with one log line and the reason in `status()`; the daemon runs
on without it.

Containers are tracked by their cgroup v2 id (the `tracked` hash: id -> slot);
counts live in two mmap-ed arrays (`calls`, `errors`: slot * NR_SLOTS + nr)
read without a syscall. Events of the sensitive set come through a BPF ring
buffer read here and go onto the EventBus with source "bpf".
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from interceptd import syscalls
from interceptd.events import Event, EventBus
from interceptd.kernel.bpf import cgroup2_id, map_lookup, map_update, raw_tracepoint_open

log = logging.getLogger("interceptd.ebpf")

NR_SLOTS = 512  # bpf/syscalls.bpf.c
MAX_TRACKED = 256
TRACK_BUCKETS, TRACK_PROBES = 4096, 4  # the `tracked` table's size and probes
TRACK_TOMB = (1 << 64) - 1  # a bucket whose id left (bpf/syscalls.bpf.c)
TRACK = struct.Struct("<QII")  # struct track_t: cgroup id, slot
RING_PAGES = 64  # 256 KiB of events; a power of two
EVENTS_PER_SEC = 2000  # per container; beyond, events are dropped and counted
OTHER_NR = NR_SLOTS - 1
EVENT = struct.Struct("<QQ6QqIIIiII16s")  # struct event_t
LOAD_TIMEOUT = 60.0
LOADER_NICE = 10

_RINGBUF_BUSY, _RINGBUF_DISCARD, _RINGBUF_HDR = 1 << 31, 1 << 30, 8


def _now_offset() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, to date events stamped by bpf_ktime_get_ns()."""
    return time.time() - time.monotonic()


def _child_env() -> dict[str, str]:
    """The daemon's environment, with the directory this package was imported from first
    on PYTHONPATH: an installed daemon (the .deb's /usr/lib/interceptd) finds its package
    by a path its wrapper set, which a child interpreter would not know."""
    import interceptd

    top = os.path.dirname(os.path.dirname(os.path.abspath(interceptd.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH")) if p)
    return env


def run_loader(python: str = sys.executable) -> tuple[dict[str, Any], list[int]]:
    """Run interceptd/ebpf_load.py in a child: (its description, the fds it handed over),
    or RuntimeError with the child's reason."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent, child:
        proc = subprocess.Popen(
            # -P and cwd /: the child runs as root; never import from the daemon's cwd.
            [python, "-P", "-m", "interceptd.ebpf_load", str(child.fileno()),
             str(RING_PAGES), str(EVENTS_PER_SEC)],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, cwd="/", env=_child_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # bcc's compile is ~0.5 s of CPU: it yields to the daemon (its other parts
        # still starting) and to the first containers' starts.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, LOADER_NICE)
        child.close()
        try:
            parent.settimeout(LOAD_TIMEOUT)
            msg, fds, _flags, _addr = socket.recv_fds(parent, 65536, 16)
            if fds:
                parent.sendall(b"k")  # the child may go now
            desc = json.loads(msg.split(b"\n", 1)[0] or b"{}") if msg else {}
        except (OSError, ValueError) as e:
            desc, fds = {"error": f"loader: {e}"}, []
        finally:
            try:
                _out, err = proc.communicate(timeout=LOAD_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                _out, err = proc.communicate()
    if "error" in desc or not fds:
        for fd in fds:
            os.close(fd)
        why = desc.get("error") or (err or b"").decode(errors="replace").strip()[-300:]
        raise RuntimeError(why or f"loader exited {proc.returncode}")
    return desc, fds


@dataclass
class Figures:
    up: bool
    compile_seconds: float
    tracked: int
    lost: int  # the ring was full
    throttled: int = 0  # a container streamed more than EVENTS_PER_SEC
    # (container id or label, names, syscall) -> (calls, errors)
    counts: dict[tuple[str, tuple[str, ...], str], tuple[int, int]] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # syscall -> events streamed


@dataclass
class _Tracked:
    cid: str
    cgroup: int
    slot: int
    bucket: int


class BpfLayer:
    def __init__(self, bus: EventBus | None, *, sensitive: Iterable[str],
                 cgroup2_mount: str | None, label_of: Callable[[str], str] | None = None,
                 python: str = sys.executable) -> None:
        self._bus = bus
        self._sensitive = sorted({syscalls.nr(n) for n in sensitive if n in syscalls.NUMBERS})
        self._cg2 = cgroup2_mount
        self._label_of = label_of or (lambda _cid: "other")
        self._python = python
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.up = False
        self.reason = "starting"
        self.detail: dict[str, Any] = {}
        self.compile_seconds = 0.0
        self._fds: list[int] = []
        self._maps: dict[str, int] = {}
        self._progs: dict[str, int] = {}  # raw tracepoint -> program fd
        self._links: dict[str, int] = {}  # raw tracepoint -> attachment fd
        self._calls: memoryview | None = None
        self._errors: memoryview | None = None
        self._mmaps: list[mmap.mmap] = []
        self._free = list(range(MAX_TRACKED - 1, -1, -1))
        self._by_cid: dict[str, _Tracked] = {}
        self._table: dict[int, int] = {}  # the `tracked` buckets in use: bucket -> id
        self._pending: dict[str, str] = {}  # cid -> cgroup v2 path, tracked once up
        self._retired: dict[tuple[str, str], list[int]] = {}
        self._events: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self.ready = threading.Event()  # set once up or given up

    # -- life cycle ----------------------------------------------------------

    def start(self) -> BpfLayer:
        self._thread = threading.Thread(target=self._load, name="ebpf-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._reader is not None:
            self._reader.join(2)
        with self._lock:
            self.up = False
            self._detach()
            for view in (self._calls, self._errors):
                if view is not None:
                    view.release()
            self._calls = self._errors = None
            for m in self._mmaps:
                with contextlib.suppress(BufferError):
                    m.close()
            self._mmaps.clear()
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            desc, fds = self._run_loader()
            self._adopt(desc, fds)
        except Exception as e:
            self.reason = str(e) or type(e).__name__
            log.warning("eBPF layer off", extra={"fields": {"reason": self.reason}})
            self.ready.set()
            return
        self.compile_seconds = time.monotonic() - t0
        self.detail = {k: desc[k] for k in ("headers", "import_s", "compile_s",
                                            "loader_maxrss_kb", "frame_check", "exits_counted")
                       if k in desc}
        with self._lock:  # one step: a container detaching meanwhile is not left tracked
            self.up = True
            self.reason = ""
            pending, self._pending = self._pending, {}
            for cid, path in pending.items():
                try:
                    self._track_locked(cid, path)
                except OSError as e:
                    log.warning("container not counted by eBPF", extra={"fields": {
                        "container": cid, "error": str(e)}})
        self._reader = threading.Thread(target=self._read_events, name="ebpf-events",
                                        daemon=True)
        self._reader.start()
        log.info("eBPF layer up", extra={"fields": {
            "seconds": round(self.compile_seconds, 3), "headers": desc.get("headers"),
            "frame_check": desc.get("frame_check"), "sensitive": len(self._sensitive)}})
        self.ready.set()

    def _run_loader(self) -> tuple[dict[str, Any], list[int]]:
        if self._cg2 is None:
            raise RuntimeError("no cgroup v2 hierarchy mounted (containers have no v2 id)")
        return run_loader(self._python)

    def _adopt(self, desc: dict[str, Any], fds: list[int]) -> None:
        self._fds = fds
        self._maps = {name: fds[i] for name, i in desc["maps"].items()}
        self._progs = {tp: fds[i] for tp, i in desc["progs"].items()}
        size = MAX_TRACKED * NR_SLOTS * 8
        for name in ("calls", "errors"):
            m = mmap.mmap(self._maps[name], size, mmap.MAP_SHARED,
                          mmap.PROT_READ | mmap.PROT_WRITE)
            self._mmaps.append(m)
        self._calls = memoryview(self._mmaps[0]).cast("Q")
        self._errors = memoryview(self._mmaps[1]).cast("Q")
        for nr in self._sensitive:
            if nr < NR_SLOTS:
                map_update(self._maps["sensitive"], struct.pack("<I", nr), b"\1")

    # -- containers ------------------------------------------------------------

    def track(self, cid: str, cgroup_v2_path: str) -> None:
        """Count `cid`'s syscalls from now on (called at attach; before the layer is
        up the container is remembered and tracked once it is)."""
        with self._lock:
            if not self.up:
                if not self._stop.is_set() and self.reason == "starting":
                    self._pending[cid] = cgroup_v2_path
                return
            self._track_locked(cid, cgroup_v2_path)

    def _track_locked(self, cid: str, cgroup_v2_path: str) -> None:
        if cid in self._by_cid:
            return
        try:
            cg = cgroup2_id(self._cg2 or "", cgroup_v2_path)
        except (OSError, ValueError) as e:
            log.warning("container not counted by eBPF", extra={"fields": {
                "container": cid, "cgroup": cgroup_v2_path, "error": str(e)}})
            return
        if any(t.cgroup == cg for t in self._by_cid.values()):
            log.warning("container shares a cgroup v2 with another: not counted apart",
                        extra={"fields": {"container": cid, "cgroup": cgroup_v2_path}})
            return
        if not self._free:
            log.warning("eBPF tracks at most %d containers", MAX_TRACKED,
                        extra={"fields": {"container": cid}})
            return
        bucket = next((b for b in ((cg + k) % TRACK_BUCKETS for k in range(TRACK_PROBES))
                       if self._table.get(b, 0) in (0, TRACK_TOMB)), None)
        if bucket is None:  # 256 of 4,096 buckets at most in use: all 4 taken is rare
            log.warning("container not counted by eBPF: its cgroup id's buckets are taken",
                        extra={"fields": {"container": cid, "cgroup": cgroup_v2_path}})
            return
        slot = self._free.pop()
        self._zero(slot)
        try:
            self._attach()
            key = struct.pack("<I", bucket)
            # The slot first (as a left bucket: searches go on past it), then the
            # id: a program never matches the id with a stale slot.
            map_update(self._maps["tracked"], key, TRACK.pack(TRACK_TOMB, slot, 0))
            self._table[bucket] = TRACK_TOMB
            map_update(self._maps["tracked"], key, TRACK.pack(cg, slot, 0))
            self._table[bucket] = cg
        except OSError as e:
            self._free.append(slot)
            if not self._by_cid:
                self._detach()
            log.warning("container not counted by eBPF", extra={"fields": {
                "container": cid, "error": str(e)}})
            return
        self._by_cid[cid] = _Tracked(cid, cg, slot, bucket)

    def untrack(self, cid: str) -> None:
        """Stop counting `cid` (detach); its figures are kept under its metrics label."""
        with self._lock:
            self._pending.pop(cid, None)
            t = self._by_cid.pop(cid, None)
            if t is None or not self.up:
                return
            with contextlib.suppress(OSError):
                self._leave_bucket(t.bucket)
            label = self._label_of(cid)
            for nr, (n, err) in self._slot_counts(t.slot).items():
                r = self._retired.setdefault((label, syscalls.name(nr)), [0, 0])
                r[0] += n
                r[1] += err
            self._free.append(t.slot)
            if not self._by_cid:
                self._detach()

    def _leave_bucket(self, bucket: int) -> None:
        """Mark `bucket` left, then free it and the left buckets before it as long as
        the bucket after is free: no search then needs to go past them."""
        fd = self._maps["tracked"]
        map_update(fd, struct.pack("<I", bucket), TRACK.pack(TRACK_TOMB, 0, 0))
        self._table[bucket] = TRACK_TOMB
        while (self._table.get(bucket) == TRACK_TOMB
               and self._table.get((bucket + 1) % TRACK_BUCKETS, 0) == 0):
            map_update(fd, struct.pack("<I", bucket), TRACK.pack(0, 0, 0))
            del self._table[bucket]
            bucket = (bucket - 1) % TRACK_BUCKETS

    def _attach(self) -> None:
        """Attach the programs (the first tracked container): until then, and again
        once the last one leaves, no process on the host pays for them."""
        for tp, fd in self._progs.items():
            if tp not in self._links:
                self._links[tp] = raw_tracepoint_open(fd, tp)

    def _detach(self) -> None:
        for fd in self._links.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._links.clear()

    def _zero(self, slot: int) -> None:
        assert self._calls is not None and self._errors is not None
        base = slot * NR_SLOTS
        for arr in (self._calls, self._errors):
            arr[base:base + NR_SLOTS] = memoryview(bytes(NR_SLOTS * 8)).cast("Q")

    def _slot_counts(self, slot: int) -> dict[int, tuple[int, int]]:
        if self._calls is None or self._errors is None:
            return {}
        base = slot * NR_SLOTS
        calls = self._calls[base:base + NR_SLOTS].tolist()
        errors = self._errors[base:base + NR_SLOTS].tolist()
        return {nr: (n, errors[nr]) for nr, n in enumerate(calls) if n or errors[nr]}

    def counts(self, cid: str) -> dict[str, tuple[int, int]]:
        """{syscall: (calls, errors)} of a tracked container ({} if it is not)."""
        with self._lock:
            t = self._by_cid.get(cid)
            if t is None:
                return {}
            return {syscalls.name(nr) if nr != OTHER_NR else "other": v
                    for nr, v in self._slot_counts(t.slot).items()}

    def tracked(self) -> list[str]:
        with self._lock:
            return list(self._by_cid)

    # -- figures for metrics and status ---------------------------------------------

    def figures(self) -> Figures:
        with self._lock:
            fig = Figures(up=self.up, compile_seconds=self.compile_seconds,
                          tracked=len(self._by_cid), lost=self._lost(0),
                          throttled=self._lost(1))
            if not self.up:
                return fig
            for (label, name), (n, err) in self._retired.items():
                fig.counts[(label, (), name)] = (n, err)
            for t in self._by_cid.values():
                for nr, (n, err) in self._slot_counts(t.slot).items():
                    key = (t.cid, (), syscalls.name(nr) if nr != OTHER_NR else "other")
                    fig.counts[key] = (n, err)
            fig.events = dict(self._events)
        return fig

    def _lost(self, index: int) -> int:
        fd = self._maps.get("lost")
        if fd is None:
            return 0
        raw = map_lookup(fd, struct.pack("<I", index), 8)
        return struct.unpack("<Q", raw)[0] if raw else 0

    def status(self) -> dict[str, Any]:
        return {"up": self.up, "reason": self.reason, "tracked": len(self._by_cid),
                "attached": sorted(self._links),
                "seconds": round(self.compile_seconds, 3), **self.detail}

    # -- events ---------------------------------------------------------------------

    def _read_events(self) -> None:
        fd = self._maps["events"]
        page = mmap.PAGESIZE
        data_size = RING_PAGES * page
        mask = data_size - 1
        cons_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        prod_map = mmap.mmap(fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ,
                             offset=page)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        offset = _now_offset()
        try:
            while not self._stop.is_set():
                poller.poll(250)
                cons = struct.unpack_from("<Q", cons_map, 0)[0]
                prod = struct.unpack_from("<Q", prod_map, 0)[0]
                while cons < prod:
                    hdr = page + (cons & mask)
                    word = struct.unpack_from("<I", prod_map, hdr)[0]
                    if word & _RINGBUF_BUSY:
                        break
                    length = word & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
                    if not word & _RINGBUF_DISCARD and length >= EVENT.size:
                        self._on_event(EVENT.unpack_from(prod_map, hdr + _RINGBUF_HDR), offset)
                    cons += (length + _RINGBUF_HDR + 7) & ~7
                    struct.pack_into("<Q", cons_map, 0, cons)
        except Exception:
            log.exception("eBPF event reader failed")
        finally:
            cons_map.close()
            prod_map.close()

    def _on_event(self, rec: tuple[Any, ...], offset: float) -> None:
        ns, cgroup, *rest = rec
        args = rest[:6]
        ret, tgid, tid, slot, nr, _has_args, _pad, comm = rest[6:]
        name = syscalls.name(nr) if nr >= 0 else f"syscall_{nr}"
        self._events[name] = self._events.get(name, 0) + 1
        if self._bus is None or not self._bus.subscribers:
            return
        cid = next((t.cid for t in list(self._by_cid.values()) if t.slot == slot), "")
        if not cid:
            cid = f"cgroup:{cgroup}"
        details: dict[str, Any] = {"tgid": tgid} if tgid != tid else {}
        failed = ret < 0
        self._bus.publish(Event(
            time=ns / 1e9 + offset, container=cid, pid=tid,
            comm=comm.split(b"\0", 1)[0].decode(errors="replace"), syscall=name,
            args=list(args), verdict="errno" if failed else "value",
            errno=-ret if failed else 0,
            reason="sensitive syscall",
            source="bpf", value=None if failed else ret, details=details or None))
