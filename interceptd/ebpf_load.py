"""The short-lived child that compiles and attaches interceptd's eBPF programs.

`python -m interceptd.ebpf_load FD RING_PAGES EVENTS_PER_SEC`: compiles bpf/syscalls.bpf.c
with bcc, attaches it to the raw_syscalls tracepoints, and sends the daemon,
over the unix socket FD, one JSON line describing the maps with their fds
(SCM_RIGHTS) and the tracepoints' perf-event fds that keep the programs
attached. Then it leaves with os._exit, skipping bcc's clean-up (which would
disable the shared perf events): the programs stay attached for as long as
the daemon holds those fds.

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
TRACEPOINTS = (b"raw_syscalls:sys_enter", b"raw_syscalls:sys_exit")
TRACEFS = "/sys/kernel/tracing"


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


def ensure_tracefs() -> str:
    """Tracepoints are attached through tracefs; systemd mounts it at boot, a
    minimal host may not have. Mounting it is what systemd would have done."""
    if os.path.isdir(f"{TRACEFS}/events/raw_syscalls"):
        return "present"
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount tracefs on {TRACEFS}: {os.strerror(e)}")
    if not os.path.isdir(f"{TRACEFS}/events/raw_syscalls"):
        raise OSError(0, "tracefs has no raw_syscalls events")
    return "mounted"


def load(ring_pages: int, events_per_sec: int) -> tuple[dict[str, Any], list[int]]:
    t0 = time.monotonic()
    if os.environ.get("INTERCEPTD_BPF_DISABLE"):
        raise RuntimeError("disabled by INTERCEPTD_BPF_DISABLE")
    try:
        from bcc import BPF
    except Exception as e:  # bcc raises more than ImportError without its library
        raise RuntimeError(f"bcc not importable: {e}") from None
    t_import = time.monotonic()
    tracefs = ensure_tracefs()
    if not headers():
        raise RuntimeError(f"no kernel headers at /lib/modules/{os.uname().release}/build")
    text = source_path().read_text()
    b = BPF(text=text, cflags=[f"-DRING_PAGES={ring_pages}",
                               f"-DEVENTS_PER_SEC={events_per_sec}", "-Wno-visibility"])
    t_done = time.monotonic()
    fds: list[int] = []
    desc: dict[str, Any] = {"maps": {}, "links": [], "headers": headers(), "tracefs": tracefs,
                            "import_s": t_import - t0, "compile_s": t_done - t_import}
    for name in MAPS:
        desc["maps"][name] = len(fds)
        fds.append(b[name].map_fd)
    import resource

    desc["loader_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for tp in TRACEPOINTS:
        fd = b.tracepoint_fds.get(tp)
        if fd is None:
            raise RuntimeError(f"tracepoint {tp.decode()} not attached")
        desc["links"].append(len(fds))
        fds.append(fd)
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
