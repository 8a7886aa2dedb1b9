"""A private Debian LXCFS on a mountpoint of the test's own, for side-by-side checks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

LXCFS = "/usr/bin/lxcfs"


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@contextlib.contextmanager
def running(mnt: Path, pidfile: Path) -> Iterator[Path]:
    """`lxcfs --enable-cfs` (it cuts the CPUs to the quota, as interceptd does) on `mnt`;
    stopped by its pid and unmounted afterwards."""
    assert os.path.exists(LXCFS), "the test set-up installs Debian's lxcfs"
    p = subprocess.Popen([LXCFS, "-f", "--enable-cfs", "-p", str(pidfile), str(mnt)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (mnt / "proc" / "meminfo").exists():
            assert p.poll() is None and time.monotonic() < deadline, "lxcfs did not start"
            time.sleep(0.05)
        yield mnt
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        assert not mounted(mnt)
