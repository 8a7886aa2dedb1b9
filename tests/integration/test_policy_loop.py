"""1,000 tmpfs mount/umount pairs through the daemon: every answer right, and nothing left
behind (mounts in the container, fds or child processes in the daemon)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.harness import Daemon, Runtime
from tests.integration.policy_support import children, privileged

pytestmark = pytest.mark.integration


def settle(daemon: Daemon, want: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    n = daemon.fd_count()
    while n != want and time.monotonic() < deadline:
        time.sleep(0.1)
        n = daemon.fd_count()
    return n


def test_thousand_mount_umount_pairs(runtime_factory: Callable[[str], Runtime],
                                     bundle_factory, daemon: Daemon, new_id):
    rt = runtime_factory("runc")
    fds_before = daemon.fd_count()
    script = ("mkdir -p /mnt/l && policy_mntapi loop 1000 /mnt/l && "
              "echo left=$(grep -c ' /mnt/l ' /proc/self/mountinfo)")
    t0 = time.monotonic()
    res = rt.run(privileged(bundle_factory, daemon, script), new_id("loop"), timeout=300)
    elapsed = time.monotonic() - t0
    assert res.rc == 0, (res.stdout, res.stderr)
    assert "loop ok=1000 bad=0 first_errno=0 " in res.stdout, res.stdout
    assert "left=0" in res.stdout, res.stdout
    assert settle(daemon, fds_before) == fds_before, sorted(daemon.fds().items())[3:]
    assert children(daemon.pid) == []
    print(f"1000 vetted pairs in {elapsed:.2f}s")
