"""`interceptctl probe` against this host's real kernel (read-only probes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from interceptd.probe import probe


def test_probe_reports_every_feature_with_a_usable_value():
    feats = probe()
    assert set(feats) == {"user_notif", "sync_wakeup", "addfd_send", "user_namespaces",
                          "idmapped_mounts", "cgroup2", "fuse", "bpf_lsm",
                          "kernel_headers", "bcc"}
    # What every test of this suite relies on: probed, not assumed.
    assert feats["user_notif"] is True and feats["user_namespaces"] is True
    assert feats["idmapped_mounts"] is True
    assert isinstance(feats["cgroup2"], str) and os.path.isdir(feats["cgroup2"])
    assert all(isinstance(v, bool) for k, v in feats.items() if k != "cgroup2")
    # The kernel's own list decides bpf_lsm; the probe must agree with it.
    try:
        with open("/sys/kernel/security/lsm", encoding="ascii") as f:
            lsm = "bpf" in f.read().strip().split(",")
    except OSError:
        lsm = False
    assert feats["bpf_lsm"] is lsm


def test_interceptctl_probe_needs_no_daemon(tmp_path):
    out = subprocess.run([sys.executable, "-m", "interceptd.cli", "--state-dir",
                          str(tmp_path), "probe", "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out) == json.loads(json.dumps(probe()))
