"""The short-lived child that compiles and attaches interceptd's eBPF programs.

`python -m interceptd.ebpf_load FD RING_PAGES EVENTS_PER_SEC SENSITIVE`: compiles
bpf/syscalls.bpf.c with bcc, attaches it to raw_syscalls:sys_exit and the entry events
of exit/exit_group and of the SENSITIVE syscalls (comma-separated), and sends the daemon,
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

from interceptd.kernel.consts import CLONE_NEWNS, MS_PRIVATE, MS_REC

MAPS = ("tracked", "calls", "errors", "sensitive", "lost", "events")
TRACEFS = "/sys/kernel/tracing"
# The kernel's names of syscall events where they differ from the syscall's.
EVENT_NAMES = {"umount2": "umount"}


def entry_event(name: str) -> tuple[str, int] | None:
    """(syscalls:sys_enter_<x>, how many arguments its record carries) or None."""
    event = f"sys_enter_{EVENT_NAMES.get(name, name)}"
    try:
        with open(f"{TRACEFS}/events/syscalls/{event}/format") as f:
            fmt = f.read()
    except OSError:
        return None
    fields = [ln for ln in fmt.splitlines() if ln.strip().startswith("field:")]
    # After the common fields and __syscall_nr, one field per argument.
    try:
        after = next(i for i, ln in enumerate(fields) if "__syscall_nr" in ln)
    except StopIteration:
        return None
    return f"syscalls:{event}", min(6, len(fields) - after - 1)


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
    """Tracepoints are found through tracefs; systemd mounts it at boot, a minimal
    host may not have. Then this child mounts it in a mount namespace of its own:
    an attached tracepoint does not need the mount to last, and the host's mounts
    stay as they were."""
    if os.path.isdir(f"{TRACEFS}/events/raw_syscalls"):
        return "present"
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret: int, what: str) -> None:
        if ret != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")

    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    check(libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None),
          f"mount tracefs on {TRACEFS}")
    if not os.path.isdir(f"{TRACEFS}/events/raw_syscalls"):
        raise OSError(0, "tracefs has no raw_syscalls events")
    return "mounted in the loader's own mount namespace"


def load(ring_pages: int, events_per_sec: int,
         sensitive: list[str]) -> tuple[dict[str, Any], list[int]]:
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
    from interceptd import syscalls

    # Counting: every call at its exit (the TRACEPOINT_PROBE bcc attached while
    # loading), exit/exit_group at their entry.
    for name in ("exit", "exit_group"):
        ev = entry_event(name)
        if ev is not None:
            b.attach_tracepoint(tp=ev[0].encode(), fn_name=b"on_exit_enter")
    # Sensitive calls: their arguments at entry, where the kernel has the event.
    desc["nargs"] = {}
    for name in sensitive:
        ev = entry_event(name)
        if ev is None or name not in syscalls.NUMBERS:
            continue
        b.attach_tracepoint(tp=ev[0].encode(), fn_name=f"on_sensitive_enter_{ev[1]}".encode())
        desc["nargs"][str(syscalls.nr(name))] = ev[1]
    for fd in b.tracepoint_fds.values():
        desc["links"].append(len(fds))
        fds.append(fd)
    desc["tracepoints"] = len(b.tracepoint_fds)
    return desc, fds


def main(argv: list[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    ring_pages, events_per_sec = int(argv[1]), int(argv[2])
    sensitive = [n for n in (argv[3] if len(argv) > 3 else "").split(",") if n]
    try:
        desc, fds = load(ring_pages, events_per_sec, sensitive)
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
