"""The rootfs overlay built from layer fds (interceptd/runtime/ovlfd.py) on this kernel:
its options in mountinfo name no host path, and it works as an overlay."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from interceptd.kernel import mountapi
from interceptd.runtime import ovlfd

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("work_parent", ["c", "elsewhere"])
def test_overlay_options_name_no_host_path(workdir: Path, work_parent: str) -> None:
    top = workdir / "ovl"
    for d in ("l0", "l1", "c/diff", f"{work_parent}/work", "m"):
        (top / d).mkdir(parents=True, exist_ok=True)
    (top / "l0" / "a").write_text("from l0\n")
    (top / "l1" / "a").write_text("hidden\n")
    (top / "l1" / "b").write_text("from l1\n")
    lowers = [mountapi.open_tree(str(top / n)) for n in ("l0", "l1")]
    try:
        fd = ovlfd.overlay_fd(lowers, str(top / "c" / "diff"),
                              str(top / work_parent / "work"),
                              ["xino=off", "index=off", "uuid=on", "redirect_dir=on"])
    finally:
        for f in lowers:
            os.close(f)
    try:
        mountapi.move_mount(fd, str(top / "m"))
    finally:
        os.close(fd)
    try:
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if ln.split()[4] == str(top / "m"))
        opts = line.split(" - ")[1]
        assert str(workdir) not in opts, line
        assert "lowerdir+=/,lowerdir+=/" in opts, line
        up = "/diff" if work_parent == "c" else "/c/diff"
        assert f"upperdir={up}," in opts, line
        assert (top / "m" / "a").read_text() == "from l0\n"
        assert (top / "m" / "b").read_text() == "from l1\n"
        (top / "m" / "new").write_text("x")
        assert (top / "c" / "diff" / "new").read_text() == "x"
    finally:
        subprocess.run(["umount", str(top / "m")], check=True)
