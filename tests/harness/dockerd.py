"""A private dockerd (the installed docker.io) for tests.

Its own data root, exec root and socket under a directory the caller gives, no bridge and
no iptables; stopped by the pid this module started. `tests/integration/test_docker.py`
runs interceptd-runc under it; `tests/harness/seccompprofiles.py` uses it to capture the
configs dockerd hands to a runtime.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DOCKERD = shutil.which("dockerd")
DOCKER = shutil.which("docker")
IMAGE = "interceptd-busybox:test"


def busybox_tar(path: Path) -> None:
    """A busybox image rootfs as a tarball, every entry owned by root."""
    def add(tf: tarfile.TarFile, name: str, *, kind: bytes = tarfile.DIRTYPE,
            data: bytes = b"", mode: int = 0o755, link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, 0, 0, int(time.time())
        ti.linkname = link
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    busybox = Path("/bin/busybox").read_bytes()
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with tarfile.open(path, "w") as tf:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "data"):
            add(tf, d, mode=0o1777 if d == "tmp" else 0o755)
        add(tf, "bin/busybox", kind=tarfile.REGTYPE, data=busybox)
        for a in applets:
            if a != "busybox":
                add(tf, f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        add(tf, "etc/passwd", kind=tarfile.REGTYPE, data=b"root:x:0:0:root:/root:/bin/sh\n",
            mode=0o644)
        add(tf, "etc/group", kind=tarfile.REGTYPE, data=b"root:x:0:\n", mode=0o644)


def version() -> str:
    """The installed dockerd's version line (`Docker version 20.10.24+dfsg1, build ...`)."""
    assert DOCKERD is not None
    return subprocess.run([DOCKERD, "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


class Dockerd:
    """dockerd with `config` as its daemon.json, in `top` (keep it short: socket paths)."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.sock = top / "docker.sock"
        self.pidfile = top / "docker.pid"
        self.log_path = top / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> None:
        assert DOCKERD is not None
        (self.top / "daemon.json").write_text(json.dumps(config))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [DOCKERD, "--config-file", str(self.top / "daemon.json"),
                 "--data-root", str(self.top / "data"), "--exec-root", str(self.top / "exec"),
                 "--pidfile", str(self.pidfile), "-H", f"unix://{self.sock}",
                 "--bridge=none", "--iptables=false", "--ip6tables=false",
                 "--storage-driver=overlay2"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env if env is not None else os.environ), start_new_session=True)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not come up:\n{self.log()}")
            time.sleep(0.2)

    def import_busybox(self) -> None:
        tar = self.top / "busybox.tar"
        busybox_tar(tar)
        self.docker("import", str(tar), IMAGE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def docker(self, *args: str, check: bool = True, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
        assert DOCKER is not None
        p = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: rc={p.returncode}\n{p.stderr}")
        return p

    def stop(self) -> None:
        if self.proc is None:
            return
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def unmount_under(top: str) -> None:
    """Lazily unmount every mount point at or beneath `top` (deepest first)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in reversed(points):
        if p == top or p.startswith(top + "/"):
            subprocess.run(["umount", "-l", p], check=False)
