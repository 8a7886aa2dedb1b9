"""OCI bundles for runc 1.1.5 / crun 1.8.1: a user namespace with a unique
host id range, the rootfs owned by the mapped root, and a seccomp section
with SCMP_ACT_NOTIFY rules and a listenerPath."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rootfs import copy_rootfs

ID_RANGE_SIZE = 65536
_ID_BASE = 100000
_MAX_SLOTS = 60000

# Docker's default capability set.
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

CAP_NAMES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]


def bounding_caps() -> list[str]:
    """Every capability in this process's bounding set (runc fails on a
    config asking for one outside it, e.g. CAP_SYS_RESOURCE on this host)."""
    with open("/proc/self/status") as f:
        bnd = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return [f"CAP_{n}" for i, n in enumerate(CAP_NAMES) if bnd >> i & 1]


_slot_counter = itertools.count()


def allocate_id_base() -> int:
    """A host uid/gid base for one container, unique within this process and
    very likely across concurrent test sessions (mixed with the pid)."""
    slot = (os.getpid() * 97 + next(_slot_counter)) % _MAX_SLOTS
    return _ID_BASE + ID_RANGE_SIZE * slot


@dataclass
class BundleSpec:
    """What a test wants in its container; defaults give a plain container.

    notify: syscall names sent to the listener (SCMP_ACT_NOTIFY).
    seccomp_rules: extra raw OCI seccomp rules (e.g. SCMP_ACT_ERRNO).
    seccomp: force a seccomp section even without rules (filter installed,
      nothing notified): None = only when there are rules.
    caps: "default" (Docker's set), "all" (clamped to the bounding set) or a list.
    """

    args: list[str]
    env: list[str] = field(
        default_factory=lambda: ["PATH=/bin:/sbin:/usr/bin", "HOME=/root"]
    )
    cwd: str = "/"
    notify: list[str] = field(default_factory=list)
    seccomp_rules: list[dict[str, Any]] = field(default_factory=list)
    seccomp: bool | None = None
    listener_path: str | None = None
    listener_metadata: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    caps: str | list[str] = "default"
    id_base: int | None = None
    readonly_root: bool = False
    hostname: str = "container"
    extra_mounts: list[dict[str, Any]] = field(default_factory=list)


def _caps(spec: BundleSpec) -> list[str]:
    if spec.caps == "default":
        return list(DEFAULT_CAPS)
    if spec.caps == "all":
        return bounding_caps()
    assert isinstance(spec.caps, list)
    return list(spec.caps)


def oci_config(spec: BundleSpec, id_base: int) -> dict[str, Any]:
    """The config.json dict for spec, with the container's root at id_base."""
    caps = _caps(spec)
    config: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.args),
            "env": list(spec.env),
            "cwd": spec.cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": spec.readonly_root},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            # sysfs may be mounted because the netns belongs to the userns.
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
            *spec.extra_mounts,
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": id_base, "size": ID_RANGE_SIZE}],
            "gidMappings": [{"containerID": 0, "hostID": id_base, "size": ID_RANGE_SIZE}],
            "namespaces": [{"type": t} for t in
                           ("pid", "ipc", "uts", "mount", "network", "user", "cgroup")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list",
                            "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
    if spec.annotations:
        config["annotations"] = dict(spec.annotations)
    rules = list(spec.seccomp_rules)
    if spec.notify:
        rules.append({"names": list(spec.notify), "action": "SCMP_ACT_NOTIFY"})
    if rules or spec.seccomp:
        seccomp: dict[str, Any] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": rules,
        }
        if spec.listener_path is not None:
            seccomp["listenerPath"] = spec.listener_path
        if spec.listener_metadata is not None:
            seccomp["listenerMetadata"] = spec.listener_metadata
        config["linux"]["seccomp"] = seccomp
    return config


@dataclass
class Bundle:
    path: Path
    rootfs: Path
    config: dict[str, Any]
    id_base: int

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def write_config(self) -> None:
        """Rewrite config.json after a test edited self.config."""
        self.config_path.write_text(json.dumps(self.config, indent=2))


def make_bundle(path: Path, rootfs_src: Path, spec: BundleSpec) -> Bundle:
    """Create the bundle directory at path (which must not exist): a private
    copy of rootfs_src owned by the container's root, and config.json."""
    id_base = spec.id_base if spec.id_base is not None else allocate_id_base()
    path.mkdir(parents=True)
    # The container's root (an unprivileged host uid) must reach the rootfs.
    os.chmod(path, 0o711)
    rootfs = copy_rootfs(rootfs_src, path / "rootfs", id_base, id_base)
    bundle = Bundle(path=path, rootfs=rootfs, config=oci_config(spec, id_base), id_base=id_base)
    bundle.write_config()
    return bundle
