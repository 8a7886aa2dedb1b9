"""The eBPF layer's cost: syscalls in an attached container with and without it,
the kernel's floor for any program on a syscall tracepoint, the bcc compile+attach
time, how soon the seccomp listener serves, and RSS.

Rows (each a container running bench/syscall_loop on getppid(2), the cheapest
call, so the tracepoints' cost shows at its largest; and `dd` moving 4 KiB
blocks through /dev/zero and /dev/null, a syscall-heavy loop doing little else):
  off          no program on any syscall tracepoint
  floor enter  an empty BPF program on the raw sys_enter tracepoint (the bench's
               own): what any syscall tracepoint program costs every task on
               this kernel (the syscall slow path, one program run)
  floor exit   the same on sys_exit, where interceptd's program is
  tracked      the container's daemon has its eBPF layer up and counts it
  untracked    another daemon's layer is up and tracking a container; this one
               is not tracked (what every other process on the host pays)
All rows run in each round, side by side; medians of rounds, and the spread.
Target: tracked <= 1.05x off.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import OUT, REPO, ContainerEnv, Timing, build_static, table

from tests.harness.bundle import BundleSpec
from tests.harness.daemon import Daemon, render_config

TARGET = 1.05
LISTENER_TARGET = 0.2
GETPPID = 110
ROWS = ("off", "floor enter", "floor exit", "tracked", "untracked")
# An empty program held on a raw syscall tracepoint until stdin closes.
FLOOR = r"""
import sys
from bcc import BPF
b = BPF(text="int empty(void *ctx) { return 0; }")
b.attach_raw_tracepoint(tp=sys.argv[1].encode(), fn_name=b"empty")
print("up", flush=True)
sys.stdin.read()
"""


class Floor:
    def __init__(self, tp: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOR, tp], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "up":
            raise RuntimeError(f"empty program on {tp} not attached")

    def __enter__(self) -> Floor:
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_daemon(path: Path, ebpf: bool) -> tuple[Daemon, float, float]:
    """A daemon, the seconds from its exec until its seccomp socket accepts (runc and
    crun can hand a container over: they do not wait for an answer) and until a
    connection is served (read and answered: the daemon closes an empty one)."""
    d = Daemon(path, render_config(
        rules=[{"syscall": "sysfs", "action": "value", "value": 1}],
        sections={"ebpf": {"enabled": ebpf}}), log_level="info")
    times: list[float] = []
    stop = threading.Event()

    def poll(t0: float) -> None:
        while not stop.is_set():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(d.seccomp_sock))
                except OSError:
                    time.sleep(0.001)
                    continue
                times.append(time.monotonic() - t0)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(30)
                s.recv(1)  # b"": the listener read the empty message and closed
                times.append(time.monotonic() - t0)
            return

    poller = threading.Thread(target=poll, args=(time.monotonic(),), daemon=True)
    poller.start()
    try:
        d.start()
        poller.join(30)
    finally:
        stop.set()
    return d, times[0], times[1]


def wait_ebpf(d: Daemon, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = d.control("status")["ebpf"]
        if st.get("up") or st.get("reason") not in ("starting", None):
            return st
        time.sleep(0.02)
    raise TimeoutError("eBPF layer neither up nor refused")


def spread(v: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(min(v))}-{fmt.format(max(v))}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--calls", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dd-blocks", type=int, default=2_000_000)
    args = ap.parse_args()
    loop = build_static("syscall_loop")
    cmd = ["syscall_loop", "-n", str(args.calls), "-w", "10000", "-s", str(GETPPID)]
    dd = ["sh", "-c", f"sleep 0.3; time dd if=/dev/zero of=/dev/null bs=4096 "
                      f"count={args.dd_blocks} 2>&1"]
    loops: dict[str, list[Timing]] = {k: [] for k in ROWS}
    dds: dict[str, list[float]] = {k: [] for k in ROWS}
    starts: dict[str, list[float]] = {"off": [], "ebpf": []}
    served: dict[str, list[float]] = {"off": [], "ebpf": []}
    compile_s: list[float] = []
    ready_s: list[float] = []
    rss: dict[str, list[int]] = {"off": [], "ebpf": []}
    loader_rss: list[int] = []
    with ContainerEnv({"syscall_loop": loop}) as env:
        def measure(row: str, d: Daemon) -> None:
            spec = BundleSpec(args=["sh", "-c", "sleep 0.3; " + " ".join(cmd)],
                              notify=["sysfs"], listener_path=d.listener_path)
            loops[row].append(Timing.parse(env.run(spec)))
            out = env.run(BundleSpec(args=dd, notify=["sysfs"], listener_path=d.listener_path))
            real = next(ln for ln in out.splitlines() if ln.startswith("real"))
            m, s = "".join(real.split()[1:]).rstrip("s").split("m")  # busybox: "real 0m 1.23s"
            dds[row].append(int(m) * 60 + float(s))

        for r in range(args.rounds):
            off, t_off, s_off = start_daemon(env.dir / f"off{r}", ebpf=False)
            starts["off"].append(t_off)
            served["off"].append(s_off)
            try:
                measure("off", off)
                rss["off"].append(rss_kb(off.pid))
                with Floor("sys_enter"):
                    measure("floor enter", off)
                with Floor("sys_exit"):
                    measure("floor exit", off)
                t0 = time.monotonic()
                on, t_on, s_on = start_daemon(env.dir / f"on{r}", ebpf=True)
                starts["ebpf"].append(t_on)
                served["ebpf"].append(s_on)
                try:
                    st = wait_ebpf(on)
                    ready_s.append(time.monotonic() - t0)
                    if not st.get("up"):
                        print(f"eBPF layer off: {st.get('reason')}", file=sys.stderr)
                        return 1
                    compile_s.append(float(st["seconds"]))
                    loader_rss.append(int(st.get("loader_maxrss_kb") or 0))
                    measure("tracked", on)
                    # Another container tracked meanwhile: the programs are attached
                    # only while one is.
                    idle = env.bundle(BundleSpec(args=["sleep", "300"], notify=["sysfs"],
                                                 listener_path=on.listener_path))
                    with env.runtime.started(idle, f"bench-idle-{os.getpid()}-{r}"):
                        deadline = time.monotonic() + 20
                        while not on.control("status")["ebpf"].get("attached"):
                            if time.monotonic() > deadline:
                                raise TimeoutError("the idle container was never tracked")
                            time.sleep(0.02)
                        measure("untracked", off)
                    rss["ebpf"].append(rss_kb(on.pid))
                finally:
                    on.stop()
            finally:
                off.stop()
    med = {k: Timing.median(v) for k, v in loops.items()}
    dd_med = {k: statistics.median(v) for k, v in dds.items()}
    rows = []
    for k in ROWS:
        ratio = med[k].p50 / med["off"].p50
        mean_ratio = med[k].mean / med["off"].mean
        dd_ratio = dd_med[k] / max(dd_med["off"], 1e-3)
        verdict = "" if k in ("off", "floor enter", "floor exit") else (
            f"{'PASS' if ratio <= TARGET else 'MISS'} / {'PASS' if dd_ratio <= TARGET else 'MISS'}")
        rows.append((k, f"{med[k].p50:.0f}", spread([t.p50 for t in loops[k]]),
                     f"{ratio:.2f}x", f"{med[k].mean:.0f}", f"{mean_ratio:.2f}x",
                     f"{dd_med[k]:.3f}", spread(dds[k], "{:.2f}"), f"{dd_ratio:.2f}x", verdict))
    print(f"getppid(2) x {args.calls} and dd of {args.dd_blocks} 4 KiB blocks in a container, "
          f"median of {args.rounds} rounds (spread: min-max)\n")
    print(table(("row", "getppid p50 ns", "spread", "p50 ratio", "mean ns", "mean ratio",
                 "dd s", "spread", "dd ratio", f"target <= {TARGET}x (getppid / dd)"), rows))
    floor = med["floor exit"].p50 - med["off"].p50
    ours = med["tracked"].p50 - med["floor exit"].p50
    print(f"\ngetppid p50: the kernel's floor for a program on sys_exit +{floor:.0f} ns "
          f"({med['floor exit'].p50 / med['off'].p50:.2f}x), on sys_enter "
          f"+{med['floor enter'].p50 - med['off'].p50:.0f} ns; interceptd's counting on top "
          f"of the floor: +{ours:.0f} ns tracked, "
          f"+{med['untracked'].p50 - med['floor exit'].p50:.0f} ns untracked")
    print()
    print(table(("", "median", "spread"), [
        ("daemon exec -> seccomp listener accepting, eBPF on (ms)",
         f"{statistics.median(starts['ebpf']) * 1000:.0f}",
         spread([x * 1000 for x in starts["ebpf"]])),
        ("the same, eBPF off (ms)", f"{statistics.median(starts['off']) * 1000:.0f}",
         spread([x * 1000 for x in starts["off"]])),
        ("daemon exec -> a connection served, eBPF on (ms)",
         f"{statistics.median(served['ebpf']) * 1000:.0f}",
         spread([x * 1000 for x in served["ebpf"]])),
        ("the same, eBPF off (ms)", f"{statistics.median(served['off']) * 1000:.0f}",
         spread([x * 1000 for x in served["off"]])),
        ("bcc compile + load, in the loader child (s)", f"{statistics.median(compile_s):.3f}",
         spread(compile_s, "{:.3f}")),
        ("daemon exec -> eBPF layer up (s)", f"{statistics.median(ready_s):.3f}",
         spread(ready_s, "{:.3f}")),
        ("daemon RSS, eBPF off (MiB)", f"{statistics.median(rss['off']) / 1024:.1f}",
         spread([x / 1024 for x in rss["off"]], "{:.1f}")),
        ("daemon RSS, eBPF on (MiB)", f"{statistics.median(rss['ebpf']) / 1024:.1f}",
         spread([x / 1024 for x in rss["ebpf"]], "{:.1f}")),
        ("loader child peak RSS (bcc + LLVM, MiB; gone after load)",
         f"{statistics.median(loader_rss) / 1024:.1f}",
         spread([x / 1024 for x in loader_rss], "{:.1f}")),
    ]))
    for what, figs in (("accepting", starts["ebpf"]), ("serving", served["ebpf"])):
        worst = max(figs)
        print(f"listener {what} in < {LISTENER_TARGET * 1000:.0f} ms whatever bcc does "
              f"(eBPF on, worst of {len(figs)}): {'PASS' if worst < LISTENER_TARGET else 'MISS'}"
              f" ({worst * 1000:.0f} ms; median {statistics.median(figs) * 1000:.0f} ms)")
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_ebpf.json").write_text(json.dumps({
        "loops": {k: vars(v) for k, v in med.items()}, "dd": dd_med, "dd_runs": dds,
        "getppid_p50_runs": {k: [t.p50 for t in v] for k, v in loops.items()},
        "starts": starts, "served": served, "compile_s": compile_s, "ready_s": ready_s,
        "rss_kb": rss, "loader_maxrss_kb": loader_rss}, indent=2))
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
