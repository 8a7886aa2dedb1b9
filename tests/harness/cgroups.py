"""Let crun run on this hybrid cgroup host.

crun 1.8.1 refuses a hybrid host while the unified (v2) hierarchy holds a
controller; here that is hugetlb, which no v1 hierarchy has. Mounting a v1
hugetlb hierarchy moves the controller there. This is test set-up only: the
product does not require it. Several test sessions may run at once, so the
mount is shared: each session registers its pid, and the last one to leave
unmounts it, and only if a session (not the machine) mounted it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

UNIFIED = Path("/sys/fs/cgroup/unified")
HUGETLB = Path("/sys/fs/cgroup/hugetlb")
LOCK_DIR = Path("/run/interceptd-tests-hugetlb")
MOUNTED_BY_US = LOCK_DIR / "mounted-by-tests"


def _hugetlb_on_v2() -> bool:
    try:
        return "hugetlb" in (UNIFIED / "cgroup.controllers").read_text().split()
    except FileNotFoundError:
        return False


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK_DIR.mkdir(exist_ok=True)
    with open(LOCK_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _live_holders() -> list[Path]:
    holders = []
    for p in LOCK_DIR.glob("holder-*"):
        pid = int(p.name.split("-", 1)[1])
        if pid != os.getpid() and Path(f"/proc/{pid}").exists():
            holders.append(p)
        elif pid != os.getpid():
            p.unlink(missing_ok=True)  # a session that died without cleaning up
    return holders


def acquire() -> None:
    with _locked():
        (LOCK_DIR / f"holder-{os.getpid()}").touch()
        if _hugetlb_on_v2() and not _is_mounted(HUGETLB):
            HUGETLB.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", str(HUGETLB)],
                           check=True)
            MOUNTED_BY_US.touch()


def release() -> None:
    with _locked():
        (LOCK_DIR / f"holder-{os.getpid()}").unlink(missing_ok=True)
        last = MOUNTED_BY_US.exists() and not _live_holders() and _is_mounted(HUGETLB)
        # A busy hierarchy (leftover child cgroups) is not an error here.
        if last and subprocess.run(["umount", str(HUGETLB)], check=False).returncode == 0:
            MOUNTED_BY_US.unlink()
