"""The eBPF layer's cost: syscalls in an attached container with and without it,
the bcc compile+attach time, how soon the seccomp listener serves, and RSS.

Rows (each a container running bench/syscall_loop on getppid(2), the cheapest
call, so the tracepoints' cost shows at its largest; and `dd` moving 4 KiB
blocks, a syscall-heavy loop doing some work):
  off      no daemon has an eBPF layer (the tracepoints are not attached)
  tracked  the container's daemon has its eBPF layer up and counts it
  untracked  another daemon's eBPF layer is up; this container is not tracked
             (what every other process on the host pays)
Runs alternate between "off" and the two others (a daemon with eBPF started
and stopped each round), median of rounds. Target: tracked <= 1.05x off.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from common import OUT, REPO, ContainerEnv, Timing, build_static, table

from tests.harness.bundle import BundleSpec
from tests.harness.daemon import Daemon, render_config

TARGET = 1.05
GETPPID = 110


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_daemon(path: Path, ebpf: bool) -> tuple[Daemon, float]:
    """A daemon and the seconds from its exec until its seccomp socket accepts,
    polled every millisecond alongside the harness's own start."""
    d = Daemon(path, render_config(
        rules=[{"syscall": "sysfs", "action": "value", "value": 1}],
        sections={"ebpf": {"enabled": ebpf}}), log_level="info")
    accepted: list[float] = []
    stop = threading.Event()

    def poll(t0: float) -> None:
        while not stop.is_set():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(d.seccomp_sock))
                except OSError:
                    time.sleep(0.001)
                    continue
            accepted.append(time.monotonic() - t0)
            return

    poller = threading.Thread(target=poll, args=(time.monotonic(),), daemon=True)
    poller.start()
    try:
        d.start()
        poller.join(30)
    finally:
        stop.set()
    return d, accepted[0]


def wait_ebpf(d: Daemon, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = d.control("status")["ebpf"]
        if st.get("up") or st.get("reason") not in ("starting", None):
            return st
        time.sleep(0.02)
    raise TimeoutError("eBPF layer neither up nor refused")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--calls", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dd-blocks", type=int, default=300_000)
    args = ap.parse_args()
    loop = build_static("syscall_loop")
    cmd = ["syscall_loop", "-n", str(args.calls), "-w", "10000", "-s", str(GETPPID)]
    dd = ["sh", "-c", f"sleep 0.3; time dd if=/dev/zero of=/dev/null bs=4096 "
                      f"count={args.dd_blocks} 2>&1"]
    loops: dict[str, list[Timing]] = {"off": [], "tracked": [], "untracked": []}
    dds: dict[str, list[float]] = {"off": [], "tracked": [], "untracked": []}
    starts: dict[str, list[float]] = {"off": [], "ebpf": []}
    compile_s: list[float] = []
    ready_s: list[float] = []
    rss: dict[str, list[int]] = {"off": [], "ebpf": []}
    loader_rss: list[int] = []
    with ContainerEnv({"syscall_loop": loop}) as env:
        def run_loop(d: Daemon) -> Timing:
            spec = BundleSpec(args=["sh", "-c", "sleep 0.3; " + " ".join(cmd)],
                              notify=["sysfs"], listener_path=d.listener_path)
            return Timing.parse(env.run(spec))

        def run_dd(d: Daemon) -> float:
            out = env.run(BundleSpec(args=dd, notify=["sysfs"], listener_path=d.listener_path))
            real = next(ln for ln in out.splitlines() if ln.startswith("real"))
            m, s = "".join(real.split()[1:]).rstrip("s").split("m")  # busybox: "real 0m 1.23s"
            return int(m) * 60 + float(s)

        for r in range(args.rounds):
            off, t_off = start_daemon(env.dir / f"off{r}", ebpf=False)
            starts["off"].append(t_off)
            try:
                loops["off"].append(run_loop(off))
                dds["off"].append(run_dd(off))
                rss["off"].append(rss_kb(off.pid))
                t0 = time.monotonic()
                on, t_on = start_daemon(env.dir / f"on{r}", ebpf=True)
                starts["ebpf"].append(t_on)
                try:
                    st = wait_ebpf(on)
                    ready_s.append(time.monotonic() - t0)
                    if not st.get("up"):
                        print(f"eBPF layer off: {st.get('reason')}", file=sys.stderr)
                        return 1
                    compile_s.append(float(st["seconds"]))
                    loader_rss.append(int(st.get("loader_maxrss_kb") or 0))
                    loops["tracked"].append(run_loop(on))
                    dds["tracked"].append(run_dd(on))
                    loops["untracked"].append(run_loop(off))
                    dds["untracked"].append(run_dd(off))
                    rss["ebpf"].append(rss_kb(on.pid))
                finally:
                    on.stop()
            finally:
                off.stop()
    med = {k: Timing.median(v) for k, v in loops.items()}
    dd_med = {k: statistics.median(v) for k, v in dds.items()}
    rows = []
    for k in ("off", "tracked", "untracked"):
        ratio = med[k].mean / med["off"].mean
        dd_ratio = dd_med[k] / max(dd_med["off"], 1e-3)
        verdict = "" if k == "off" else ("PASS" if ratio <= TARGET else "MISS")
        rows.append((k, f"{med[k].p50:.0f}", f"{med[k].mean:.0f}", f"{ratio:.2f}x",
                     f"{dd_med[k]:.3f}", f"{dd_ratio:.2f}x", verdict))
    print(f"getppid(2) x {args.calls} and dd of {args.dd_blocks} 4 KiB blocks in a container, "
          f"median of {args.rounds} rounds\n")
    print(table(("row", "getppid p50 ns", "mean ns", "ratio", "dd s", "dd ratio",
                 f"getppid <= {TARGET}x"), rows))
    print()
    print(table(("", "median", "max"), [
        ("daemon exec -> seccomp listener accepting, eBPF on (s)",
         f"{statistics.median(starts['ebpf']):.3f}", f"{max(starts['ebpf']):.3f}"),
        ("the same, eBPF off (s)", f"{statistics.median(starts['off']):.3f}",
         f"{max(starts['off']):.3f}"),
        ("bcc compile + attach, in the loader child (s)", f"{statistics.median(compile_s):.3f}",
         f"{max(compile_s):.3f}"),
        ("daemon exec -> eBPF layer up (s)", f"{statistics.median(ready_s):.3f}",
         f"{max(ready_s):.3f}"),
        ("daemon RSS, eBPF off (MiB)", f"{statistics.median(rss['off']) / 1024:.1f}",
         f"{max(rss['off']) / 1024:.1f}"),
        ("daemon RSS, eBPF on (MiB)", f"{statistics.median(rss['ebpf']) / 1024:.1f}",
         f"{max(rss['ebpf']) / 1024:.1f}"),
        ("loader child peak RSS (bcc + LLVM, MiB; gone after load)",
         f"{statistics.median(loader_rss) / 1024:.1f}", f"{max(loader_rss) / 1024:.1f}"),
    ]))
    listener = statistics.median(starts["ebpf"])
    print(f"\nlistener serving in < 200 ms whatever bcc does: "
          f"{'PASS' if max(starts['ebpf']) < 0.2 else 'MISS'} "
          f"(the listener starts before the eBPF loader; median {listener * 1000:.0f} ms)")
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_ebpf.json").write_text(json.dumps({
        "loops": {k: vars(v) for k, v in med.items()}, "dd": dd_med, "starts": starts,
        "compile_s": compile_s, "ready_s": ready_s, "rss_kb": rss,
        "loader_maxrss_kb": loader_rss}, indent=2))
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
