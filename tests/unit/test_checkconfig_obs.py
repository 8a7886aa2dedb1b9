"""--check-config and the daemon's unknown-key warning know [ebpf] and [metrics]."""

from __future__ import annotations

from interceptd import checkconfig
from interceptd.config import Config, unknown_keys


def test_ebpf_and_metrics_sections_known():
    good = '[ebpf]\nenabled = true\nsensitive = ["mount", "ptrace"]\n' \
           '[metrics]\ncontainers = ["web", "abc123"]\n'
    assert checkconfig.check_text(good) == []
    cfg = Config.from_dict({"ebpf": {"enabled": False}, "metrics": {"containers": ["a"]}})
    assert unknown_keys(cfg) == []


def test_ebpf_and_metrics_mistakes_named():
    bad = '[ebpf]\nenabled = 1\nsensitive = ["nosuch"]\nbogus = 2\n' \
          '[metrics]\ncontainers = [""]\n'
    assert [(p.line, p.key) for p in checkconfig.check_text(bad)] == [
        (2, "ebpf.enabled"), (3, "ebpf.sensitive"), (4, "ebpf.bogus"),
        (6, "metrics.containers")]
