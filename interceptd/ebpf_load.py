"""The short-lived child that compiles and loads interceptd's eBPF programs.

`python -m interceptd.ebpf_load FD RING_PAGES EVENTS_PER_SEC`: compiles
bpf/syscalls.bpf.c with bcc, loads its raw tracepoint programs (sys_exit,
sched_process_exit), checks on this kernel that they read the syscall registers
right, and sends the daemon, over the unix socket FD, one JSON line describing the
maps and programs with their fds (SCM_RIGHTS). The daemon attaches the programs
itself, while it tracks a container. Then the child leaves with os._exit.
Raw tracepoints are attached by name: no tracefs is needed.

Why a child: importing bcc maps its LLVM (about 60 MiB resident) and a
compile adds as much again; the daemon keeps none of it (docs/observability.md
has the figures). Failures are reported on the same socket as {"error": ...}.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

MAPS = ("tracked", "calls", "errors", "sensitive", "lost", "events")
# raw tracepoint -> program (bpf/syscalls.bpf.c)
PROGS = {"sys_exit": "on_sys_exit", "sched_process_exit": "on_task_exit"}
NR_SLOTS, MAX_TRACKED, TRACK_BUCKETS = 512, 256, 4096  # bpf/syscalls.bpf.c


def source_path() -> Path:
    for p in (Path(__file__).resolve().parents[1] / "bpf" / "syscalls.bpf.c",
              Path(sys.prefix) / "share" / "interceptd" / "bpf" / "syscalls.bpf.c"):
        if p.is_file():
            return p
    raise FileNotFoundError("bpf/syscalls.bpf.c not found")


def headers() -> str:
    """Where bcc finds kernel headers: /lib/modules/<release>/build, resolved."""
    build = f"/lib/modules/{os.uname().release}/build"
    return os.path.realpath(build) if os.path.isdir(build) else ""


def _own_cgroup2_id() -> int | None:
    """The cgroup v2 id (the directory's inode) of this process, or None."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next(ln[3:].strip() for ln in f if ln.startswith("0::"))
        with open("/proc/self/mounts") as f:
            mount = next(ln.split()[1] for ln in f if ln.split()[2] == "cgroup2")
        return os.stat(os.path.join(mount, rel.lstrip("/"))).st_ino
    except (OSError, StopIteration, IndexError):
        return None


def check_frame(b: Any) -> str:
    """Count this process's own calls for a moment and check that the syscall
    numbers and failures read from the saved registers are the ones made: the
    register layout in bpf/syscalls.bpf.c is x86-64's, checked here on the running
    kernel rather than trusted."""
    import ctypes as ct

    from interceptd import syscalls

    cg = _own_cgroup2_id()
    if cg is None:
        return "skipped (no cgroup v2 id for the loader)"
    slot = MAX_TRACKED - 1
    base = slot * NR_SLOTS
    tracked, calls, errors = b["tracked"], b["calls"], b["errors"]
    bucket = ct.c_uint32(cg % TRACK_BUCKETS)
    tracked[bucket] = tracked.Leaf(cg, slot, 0)
    try:
        b.attach_raw_tracepoint(tp=b"sys_exit", fn_name=b"on_sys_exit")
        try:
            for _ in range(200):
                os.getppid()
                with contextlib.suppress(OSError):
                    os.close(-1)  # EBADF: an error at its exit
        finally:
            b.detach_raw_tracepoint(b"sys_exit")
        got = (calls[ct.c_uint32(base + syscalls.nr("getppid"))].value,
               errors[ct.c_uint32(base + syscalls.nr("close"))].value)
    finally:
        tracked[bucket] = tracked.Leaf(0, 0, 0)
        for i in range(NR_SLOTS):
            calls[ct.c_uint32(base + i)] = ct.c_uint64(0)
            errors[ct.c_uint32(base + i)] = ct.c_uint64(0)
    if got[0] < 200 or got[1] < 200:
        raise RuntimeError(f"the syscall register layout does not match this kernel "
                           f"(counted {got[0]} of 200 getppid, {got[1]} of 200 failed close)")
    return "ok"


def load(ring_pages: int, events_per_sec: int) -> tuple[dict[str, Any], list[int]]:
    t0 = time.monotonic()
    if os.environ.get("INTERCEPTD_BPF_DISABLE"):
        raise RuntimeError("disabled by INTERCEPTD_BPF_DISABLE")
    if os.uname().machine != "x86_64":
        raise RuntimeError(f"the programs read x86-64 syscall registers; this is "
                           f"{os.uname().machine}")
    try:
        from bcc import BPF
    except Exception as e:  # bcc raises more than ImportError without its library
        raise RuntimeError(f"bcc not importable: {e}") from None
    t_import = time.monotonic()
    if not headers():
        raise RuntimeError(f"no kernel headers at /lib/modules/{os.uname().release}/build")
    text = source_path().read_text()
    b = BPF(text=text, cflags=[f"-DRING_PAGES={ring_pages}",
                               f"-DEVENTS_PER_SEC={events_per_sec}", "-Wno-visibility"])
    fds: list[int] = []
    desc: dict[str, Any] = {"maps": {}, "progs": {}, "headers": headers()}
    for name in MAPS:
        desc["maps"][name] = len(fds)
        fds.append(b[name].map_fd)
    # Loaded, not attached: the daemon attaches them while it tracks a container
    # (no container tracked, no cost for anyone).
    for tp, fn in PROGS.items():
        desc["progs"][tp] = len(fds)
        fds.append(b.load_func(fn.encode(), BPF.RAW_TRACEPOINT).fd)
    desc["compile_s"] = time.monotonic() - t_import
    desc["frame_check"] = check_frame(b)
    # sched_process_exit gained its group_dead argument in 6.16: without it, exits
    # are not counted (the kernel refuses the program at attach).
    try:
        b.attach_raw_tracepoint(tp=b"sched_process_exit", fn_name=b"on_task_exit")
        b.detach_raw_tracepoint(b"sched_process_exit")
    except Exception:
        del desc["progs"]["sched_process_exit"]
        desc["exits_counted"] = False
    import resource

    desc["loader_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    desc["import_s"] = t_import - t0
    return desc, fds


def main(argv: list[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    ring_pages, events_per_sec = int(argv[1]), int(argv[2])
    try:
        desc, fds = load(ring_pages, events_per_sec)
    except Exception as e:  # every failure becomes the daemon's one log line
        msg = json.dumps({"error": str(e) or type(e).__name__}).encode() + b"\n"
        with contextlib.suppress(OSError):
            sock.sendall(msg)
        os._exit(1)
    socket.send_fds(sock, [json.dumps(desc).encode() + b"\n"], fds)
    # Wait for the daemon's word that it holds the fds, then leave without
    # bcc's clean-up (it would disable the perf events the daemon now shares).
    with contextlib.suppress(OSError):
        sock.settimeout(30)
        sock.recv(1)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
