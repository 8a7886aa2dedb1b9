"""The eBPF loader mounts tracefs where a minimal host has none (what systemd does at
boot), shown in a private mount namespace so the host's mounts are never touched."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
if os.path.isdir("/sys/kernel/tracing/events"):
    assert libc.umount2(b"/sys/kernel/tracing", MNT_DETACH) == 0, ctypes.get_errno()
before = os.path.isdir("/sys/kernel/tracing/events/raw_syscalls")
from interceptd.ebpf_load import ensure_tracefs
first = ensure_tracefs()
second = ensure_tracefs()
print(json.dumps([before, first, second,
                  os.path.isdir("/sys/kernel/tracing/events/raw_syscalls")]))
"""


def test_loader_mounts_a_missing_tracefs():
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                          "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[false, "mounted", "present", true]'
