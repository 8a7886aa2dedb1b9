"""`interceptctl probe` against this host's real kernel (read-only probes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from interceptd.probe import probe

FEATURES = {"user_notif", "sync_wakeup", "addfd_send", "wait_killable_recv", "user_namespaces",
            "idmapped_mounts", "cgroup2", "fuse", "fuse_passthrough", "time_namespaces",
            "bpf_tracepoints",
            "bpf_raw_tracepoints", "bpf_lsm", "bpf_fentry", "tracefs", "kernel_headers", "bcc",
            "bcc_compile", "bcc_headers"}


def test_probe_reports_every_feature_with_a_usable_value():
    feats = probe()
    reasons = feats.pop("reasons")
    assert set(feats) == FEATURES
    # What every test of this suite relies on: probed, not assumed.
    assert feats["user_notif"] is True and feats["user_namespaces"] is True
    assert feats["idmapped_mounts"] is True
    assert feats["time_namespaces"] is True  # Linux 6.18, CONFIG_TIME_NS
    assert feats["wait_killable_recv"] is True and feats["addfd_send"] is True  # Linux 6.18
    assert isinstance(feats["cgroup2"], str) and os.path.isdir(feats["cgroup2"])
    # What the eBPF layer needs, all there on this host (the Makefile links the headers).
    assert feats["bcc"] is True and feats["bcc_compile"] is True, reasons
    assert os.path.isdir(feats["bcc_headers"]) and feats["bcc_headers"] == feats["kernel_headers"]
    assert feats["bpf_tracepoints"] is True and feats["bpf_raw_tracepoints"] is True
    for k, v in feats.items():
        if k in ("cgroup2", "kernel_headers", "bcc_headers"):
            continue
        assert isinstance(v, bool), k
        # Every "no" says why; every reason belongs to a "no".
        assert (v is False) == (k in reasons), (k, v, reasons.get(k))
    # The kernel's own list decides bpf_lsm; the probe must agree with it.
    try:
        with open("/sys/kernel/security/lsm", encoding="ascii") as f:
            lsm = "bpf" in f.read().strip().split(",")
    except OSError:
        lsm = False
    if not lsm:
        assert feats["bpf_lsm"] is False and "LSM" in reasons["bpf_lsm"]
    # fentry is refused on this VM's kernel: probed, and said why, not assumed.
    if feats["bpf_fentry"] is False:
        assert reasons["bpf_fentry"]


def test_interceptctl_probe_needs_no_daemon(tmp_path):
    out = subprocess.run([sys.executable, "-m", "interceptd.cli", "--state-dir",
                          str(tmp_path), "probe", "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out) == json.loads(json.dumps(probe()))
    table = subprocess.run([sys.executable, "-m", "interceptd.cli", "probe"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    for reason in probe()["reasons"].values():
        assert reason in table
