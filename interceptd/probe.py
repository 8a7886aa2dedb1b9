"""What this host's kernel offers interceptd, probed without side effects.

The daemon degrades one layer per missing feature (DESIGN: "a missing optional
feature degrades one layer, never the whole daemon"); `interceptctl probe`
shows the same facts to an operator before anything runs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from typing import Any

from interceptd.kernel import mountinfo
from interceptd.kernel.consts import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_SET_MODE_FILTER,
)
from interceptd.kernel.libc import syscall
from interceptd.syscalls import nr

NR_MOUNT_SETATTR = nr("mount_setattr")


def _syscall_exists(nr: int) -> bool:
    # Invalid arguments on purpose: ENOSYS means the kernel lacks the call,
    # anything else (EBADF, EINVAL) means it is there. Nothing is changed.
    if syscall(ctypes.c_long(nr), -1, None, 0, None, 0) == 0:
        return True
    return ctypes.get_errno() != errno.ENOSYS


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def cgroup2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            entries = mountinfo.parse(f.read(), skip_malformed=True)
    except OSError:
        return None
    return next((e.mountpoint for e in entries if e.fstype == "cgroup2"), None)


def _bcc_importable() -> bool | str:
    """In a child: importing bcc maps LLVM (~60 MiB) into whoever imports it."""
    code = "import bcc"
    try:
        proc = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True,
                              text=True, timeout=60, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bcc import not checked: {e}"
    if proc.returncode == 0:
        return True
    lines = proc.stderr.strip().splitlines()
    return f"bcc not importable: {lines[-1] if lines else proc.returncode}"


def _bcc_compile() -> tuple[bool | str, str]:
    """(whether bcc compiles and loads the daemon's programs and they read this kernel's
    syscall registers right, the headers it used): the daemon's own loader child, its
    fds closed at once."""
    from interceptd import ebpf

    try:
        desc, fds = ebpf.run_loader()
    except Exception as e:
        return f"refused: {e}", ""
    for fd in fds:
        os.close(fd)
    return True, str(desc.get("headers") or "")


NR_SECCOMP = nr("seccomp")


def _wait_killable_recv() -> bool | str:
    # A NULL program: the kernel checks the flags first (EINVAL for one it does
    # not know) and then fails to copy the program (EFAULT): nothing is installed.
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    if syscall(ctypes.c_long(NR_SECCOMP), SECCOMP_SET_MODE_FILTER, flags, None) == 0:
        return "unexpected: a NULL filter was accepted"
    e = ctypes.get_errno()
    return True if e == errno.EFAULT else f"no ({errno.errorcode.get(e, e)}; Linux >= 5.19)"


def _kernel_config(option: str) -> bool | str:
    import gzip

    for path, opener in ((f"/boot/config-{os.uname().release}", open),
                         ("/proc/config.gz", gzip.open)):
        try:
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        if f"\n{option}=y" in text or f"\n{option}=m" in text:
            return True
        return f"no ({option} not set in {path})"
    return "unknown (no kernel config to read)"


def probe(bcc: bool = True, btf: bool = True) -> dict[str, Any]:
    """feature -> True, a path where that says more, or False with its reason in
    out["reasons"]. `bcc=False` leaves out the bcc checks (a child each), `btf=False`
    the fentry and BPF LSM checks (each parses the kernel's 5 MiB BTF)."""
    try:
        from interceptd import core

        notify = {k: bool(v) for k, v in core.notify_probe().items()
                  if k in ("user_notif", "sync_wakeup", "addfd_send")}
    except Exception:  # the C core is not built or the kernel refused
        notify = {"user_notif": False, "sync_wakeup": False, "addfd_send": False}
    from interceptd import bpfprobe

    headers = f"/lib/modules/{os.uname().release}/build"
    found: dict[str, bool | str] = {
        **notify,
        "wait_killable_recv": _wait_killable_recv(),
        "user_namespaces": _read("/proc/sys/user/max_user_namespaces") not in ("", "0"),
        "idmapped_mounts": _syscall_exists(NR_MOUNT_SETATTR),
        "cgroup2": cgroup2_mount() or "no cgroup2 mount",
        "fuse": os.path.exists("/dev/fuse") or "no /dev/fuse",
        # interceptd-runc gives each container its own clocks (runtime/timens.py);
        # without, containers keep the host's boot clock (uptime stays emulated).
        "time_namespaces": (os.path.exists("/proc/self/ns/time")
                            or "no (CONFIG_TIME_NS, Linux >= 5.6)"),
        "fuse_passthrough": _kernel_config("CONFIG_FUSE_PASSTHROUGH"),
        "bpf_tracepoints": bpfprobe.tracepoint(),
        "bpf_raw_tracepoints": bpfprobe.raw_tracepoint(),
        **({"bpf_lsm": bpfprobe.lsm(), "bpf_fentry": bpfprobe.fentry()} if btf else {}),
        "tracefs": bpfprobe.tracefs(),
        "kernel_headers": (os.path.realpath(headers) if os.path.isdir(headers)
                           else f"no {headers}"),
    }
    if bcc:
        found["bcc"] = _bcc_importable()
        if found["bcc"] is True:
            found["bcc_compile"], found["bcc_headers"] = _bcc_compile()
        else:
            found["bcc_compile"], found["bcc_headers"] = "not tried: bcc not importable", ""
    # A feature is True, a value (a path), or False with its reason under "reasons".
    reasons = {k: v for k, v in found.items()
               if isinstance(v, str) and not v.startswith("/") and k != "bcc_headers"}
    out: dict[str, Any] = {k: (False if k in reasons else v) for k, v in found.items()}
    out["reasons"] = reasons
    return out
