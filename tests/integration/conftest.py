"""Fixtures shared by the integration tests of the C core."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_core_nsexec import start_in_ns, wait_until


@pytest.fixture
def chroot_target(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """A process in a new user+mount namespace, chrooted into a busybox root,
    cwd /work: (pid, pidfd, root)."""
    root = tmp_path / "root"
    for d in ("bin", "work/rel", "mnt", "mnt2", "proc"):
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    os.chmod(tmp_path, 0o755)
    p = start_in_ns("chroot", str(root), "/bin/busybox", "sh", "-c",
                    "cd /work && exec /bin/busybox sleep 1000")
    wait_until(lambda: os.readlink(f"/proc/{p.pid}/cwd").endswith("/work")
               and os.readlink(f"/proc/{p.pid}/exe").endswith("busybox"))
    pidfd = os.pidfd_open(p.pid)
    yield p.pid, pidfd, root
    os.close(pidfd)
    p.kill()
    p.wait()
