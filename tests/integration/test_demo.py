"""`make demo` (tools/demo.py): its key lines, and nothing left behind."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.harness import dockerd

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_demo_shows_and_cleans_up():
    state = f"/run/interceptd-demo-{uuid.uuid4().hex[:8]}"
    before_tmp = set(glob.glob("/tmp/icd-demo-*"))
    res = subprocess.run([sys.executable, str(REPO / "tools/demo.py")], capture_output=True,
                         text=True, timeout=600,
                         env=dict(os.environ, INTERCEPTD_DEMO_STATE=state))
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    pid = int(re.search(r"started: pid (\d+), state dir " + re.escape(state), out).group(1))
    # The user namespace: container root is an unprivileged host id.
    maps = re.findall(r"uid_map:\s+0 (\d+) 65536", out)
    assert maps and all(int(m) > 0 for m in maps), out
    assert "umount /proc: refused (Operation not permitted)" in out
    trace = out.split("== interceptctl trace\n", 1)[1].splitlines()[0]
    assert re.search(r" demo-\w+ \d+/umount umount2\(.*\) -> errno=1(\(EPERM\))? \[umount2: ",
                     trace), out
    assert "== the host's memory, for comparison" in out
    assert re.search(r"decisions\{errno\} \d+|interceptd_notifications_total\{.*"
                     r"verdict=\"errno\"\} \d", out)
    if dockerd.DOCKERD is not None:
        assert "== busybox through a private dockerd" in out
        assert out.count("umount /proc: refused") == 2, out
    assert out.rstrip().endswith("daemon, containers, dockerd and temporary files removed")
    # Nothing left: the daemon (that pid), its state, rootfs views, dockerd, temp files.
    assert not Path(f"/proc/{pid}").exists() or "interceptd" not in Path(
        f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert not Path(state).exists() and not Path(state + "-rootfs").exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert state not in mounts and "/tmp/icd-demo-" not in mounts
    assert set(glob.glob("/tmp/icd-demo-*")) == before_tmp
