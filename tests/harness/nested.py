"""Nested runtimes: a container rootfs with the host's runc/crun (and the shared libraries
they need) and an inner busybox bundle, for runtimes run inside hardened containers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .bundle import bounding_caps

DOCKER_MASKED = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware",
]
DOCKER_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def runtime_binary(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(name)
    return Path(found)


def shared_libs(binary: Path) -> list[Path]:
    """The shared objects `ldd` lists for a binary (with the loader), none for a static
    one."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def install_runtimes(rootfs: Path, names: tuple[str, ...] = ("runc", "crun")) -> None:
    """Copy the host's runtimes (or any binaries on PATH) into `rootfs`/bin with their
    libraries at the same paths (dereferenced: a library symlink would point at the
    host)."""
    for name in names:
        binary = runtime_binary(name)
        shutil.copy2(binary, rootfs / "bin" / name)
        for lib in shared_libs(binary):
            dest = rootfs / str(lib).lstrip("/")
            # /lib64 and /lib are symlinks to usr/... on merged-/usr hosts, not here
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy2(lib.resolve(), dest)


def inner_config(script: str, extra_mounts: list[dict[str, Any]] | None = None) -> dict:
    """A busybox container as a nested runtime gets it: no user namespace (the outer
    one is enough), no seccomp section (the outer filter is inherited: a listenerPath
    of its own would be refused), every capability the outer container has."""
    caps = bounding_caps()
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", script], "env": ["PATH=/bin:/sbin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "nested",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev"]},
            *(extra_mounts or []),
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "mount", "ipc", "uts")],
            "maskedPaths": DOCKER_MASKED,
            "readonlyPaths": DOCKER_READONLY,
        },
    }


def add_inner_bundle(rootfs: Path, busybox_rootfs: Path, where: str, config: dict) -> Path:
    """An inner bundle at `rootfs`/`where`: a copy of the busybox rootfs and config."""
    bundle = rootfs / where.lstrip("/")
    bundle.mkdir(parents=True)
    shutil.copytree(busybox_rootfs, bundle / "rootfs", symlinks=True)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    os.chmod(bundle, 0o755)
    return bundle


def install_iptables(rootfs: Path) -> None:
    """The host's iptables (nf_tables backend) as `iptables`/`ip6tables` in `rootfs`/bin,
    with its libraries and the xtables extensions it loads at run time."""
    binary = Path("/usr/sbin/xtables-nft-multi")
    shutil.copy2(binary, rootfs / "bin" / "xtables-nft-multi")
    for name in ("iptables", "ip6tables", "iptables-save", "iptables-restore"):
        link = rootfs / "bin" / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to("xtables-nft-multi")
    for lib in shared_libs(binary):
        dest = rootfs / str(lib).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.copy2(lib.resolve(), dest)
    ext = Path("/usr/lib/x86_64-linux-gnu/xtables")
    if ext.is_dir():
        shutil.copytree(ext, rootfs / str(ext).lstrip("/"), dirs_exist_ok=True)
