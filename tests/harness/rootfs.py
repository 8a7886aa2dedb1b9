"""A busybox rootfs (from busybox-static) and per-container copies of it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


def build_rootfs(dest: Path, binaries: dict[str, Path] | None = None) -> Path:
    """Build a minimal rootfs at dest: busybox and its applets under /bin,
    empty mount points, /etc/passwd and /etc/group, and each extra static
    binary copied to /bin/<name>. Owned by host root; see copy_rootfs()."""
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "root", "mnt", "run", "var/tmp"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = dest / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (dest / "sbin").symlink_to("bin")
    (dest / "usr").mkdir(exist_ok=True)
    (dest / "usr" / "bin").symlink_to("../bin")
    (dest / "usr" / "sbin").symlink_to("../bin")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (dest / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (dest / "etc" / "hostname").write_text("container\n")
    for name, path in (binaries or {}).items():
        shutil.copy2(path, dest / "bin" / name)
    return dest


def copy_rootfs(src: Path, dest: Path, uid: int, gid: int) -> Path:
    """Copy src to dest and chown every entry to (uid, gid): the host ids of
    the container's root, so the rootfs is owned by the mapped root.
    About 10 ms for the busybox rootfs, so every container gets its own."""
    shutil.copytree(src, dest, symlinks=True)
    for root, dirs, files in os.walk(dest):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, gid)
    os.lchown(dest, uid, gid)
    return dest
