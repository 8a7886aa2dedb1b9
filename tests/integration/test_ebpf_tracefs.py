"""The eBPF loader mounts tracefs where a minimal host has none, in its own mount
namespace: shown in a private mount namespace without tracefs (so the host's
mounts are never touched), where the loader's mount is seen by the loader only."""

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
import subprocess, sys
child = subprocess.run([sys.executable, "-c",
    "import json, os\nfrom interceptd.ebpf_load import ensure_tracefs\n"
    "print(json.dumps([ensure_tracefs(), ensure_tracefs(),"
    " os.path.isdir('/sys/kernel/tracing/events/raw_syscalls')]))"],
    capture_output=True, text=True, check=True)
print(json.dumps([before, json.loads(child.stdout),
                  os.path.isdir("/sys/kernel/tracing/events/raw_syscalls")]))
"""


def test_loader_mounts_a_missing_tracefs():
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                          "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        '[false, ["mounted in the loader\'s own mount namespace", "present", true], false]')
