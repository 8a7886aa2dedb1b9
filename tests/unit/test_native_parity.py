"""The native mount helper's vetting (csrc/vet.c) never allows more than the Python
policy (policy/mounts.py) decides, and where it acts it does what the policy would.

The C side is the real one: the same functions the helper (csrc/native.c) calls on
its copies of a mount(2)/umount2(2) and the vetted umount (csrc/mounts.c) calls on the
mount it found, through the cffi binding. No kernel is involved: they are pure.
"""

from __future__ import annotations

import itertools

import pytest

from interceptd._corelib import ffi, lib
from interceptd.handlers.mount import NATIVE_FSTYPES
from interceptd.kernel import consts as c
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.immutable import snapshot
from interceptd.policy.mounts import (
    ALLOWED_FSTYPES,
    MountCall,
    MountContext,
    UmountCall,
    decide_mount,
    decide_umount,
)
from tests.unit.policy_samples import RUNC_INIT, RUNC_LATER, UNSHARED

NATIVE_LIST = ffi.new("char[]", b"".join(t.encode() + b"\0" for t in NATIVE_FSTYPES) + b"\0")

FSTYPES = sorted(ALLOWED_FSTYPES | set(NATIVE_FSTYPES) | {
    "proc", "sysfs", "ext4", "xfs", "overlay", "fuse", "cgroup", "cgroup2", "bpf",
    "debugfs", "securityfs", "configfs", "nfs", "tmpfs2", "TMPFS", ""})
TARGETS = ["/mnt/x", "/tmp", "/mnt/p", "/proc/x", "/mnt/proc", "/sys/fs/x", "/", "mnt/x",
           "./x", "/mnt/../proc", "/dev/shm", "/run/x"]
MOUNT_FLAGS = [
    0, c.MS_RDONLY, c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC, c.MS_MGC_VAL,
    c.MS_MGC_VAL | c.MS_RDONLY, c.MS_RELATIME, c.MS_NOATIME | c.MS_STRICTATIME,
    c.MS_REMOUNT, c.MS_REMOUNT | c.MS_RDONLY, c.MS_BIND, c.MS_BIND | c.MS_REC, c.MS_MOVE,
    c.MS_SHARED, c.MS_PRIVATE, c.MS_SLAVE, c.MS_UNBINDABLE, c.MS_PRIVATE | c.MS_REC,
    c.MS_SILENT, c.MS_LAZYTIME, c.MS_MGC_VAL | c.MS_BIND, 1 << 40,
]
UMOUNT_FLAGS = sorted({
    a | b for a, b in itertools.product(
        (0, c.MNT_DETACH, c.MNT_EXPIRE, c.UMOUNT_NOFOLLOW, c.MNT_DETACH | c.UMOUNT_NOFOLLOW),
        (0, c.MNT_FORCE, 0x10, 1 << 31))})


def ctx(text: str) -> MountContext:
    return MountContext(table=MountTable.parse(text), imm=snapshot(MountTable.parse(RUNC_INIT)))


def _s(v: str | None):
    return ffi.NULL if v is None else v.encode()


def c_mount(flags: int, fstype: str | None, target: str | None) -> bool:
    return lib.icd_vet_mount(flags, _s(fstype), _s(target), NATIVE_LIST) == lib.ICD_VET_NATIVE


def c_umount(flags: int, target: str, fstype: str, parent: str | None) -> bool:
    # The helper's check of the call, then the vetted umount's of the mount it names
    # (csrc/mounts.c forwards "/" and paths ending in "." or "..", as here).
    last = target.rstrip("/").rsplit("/", 1)[-1]
    return (lib.icd_vet_umount(flags, _s(target)) == lib.ICD_VET_NATIVE
            and target != "/" and last not in (".", "..")
            and lib.icd_vet_umount_mount(_s(fstype), _s(parent)) == lib.ICD_VET_NATIVE)


def test_mount_native_only_where_the_policy_performs_the_same_mount():
    context = ctx(RUNC_LATER)
    native = 0
    for fstype, target, flags in itertools.product(FSTYPES, TARGETS, MOUNT_FLAGS):
        if not c_mount(flags, fstype, target):
            continue
        native += 1
        for source, data in (("none", None), (None, "size=1k"), ("x", "mode=0755")):
            d = decide_mount(MountCall(source, target, fstype, flags, data), context)
            assert d.kind == "perform" and [o.op for o in d.ops] == ["mount"], (
                fstype, target, hex(flags), d)
            # The helper's record words the reason as the policy does.
            assert d.reason == f"{fstype} allowed", d
    # Not vacuous: every native type at a plain path with plain flags is the helper's.
    assert native >= len(NATIVE_FSTYPES) * 3 * 8


def test_mount_strings_missing_or_unlisted_are_forwarded():
    assert not c_mount(0, None, "/mnt/x")
    assert not c_mount(0, "tmpfs", None)
    empty = ffi.new("char[]", b"\0")
    assert lib.icd_vet_mount(0, b"tmpfs", b"/mnt/x", empty) == lib.ICD_VET_FORWARD
    assert lib.icd_vet_mount_flags(c.MS_MGC_VAL | c.MS_RDONLY) == c.MS_RDONLY


@pytest.mark.parametrize("sample", [RUNC_LATER, UNSHARED])
def test_umount_native_only_where_the_policy_performs_it(sample: str):
    context = ctx(sample)
    native = 0
    for e, flags in itertools.product(context.table.entries, UMOUNT_FLAGS):
        parent = context.table.parent(e)
        if not c_umount(flags, e.mountpoint, e.fstype, parent.fstype if parent else None):
            continue
        native += 1
        d = decide_umount(UmountCall(e.mountpoint, flags, e), context)
        assert d.kind == "perform", (e.mountpoint, hex(flags), d)
        assert d.reason == "umount of the container's own mount", d
    assert native > 0


def test_umount_of_pseudo_filesystems_and_what_sits_on_them_is_forwarded():
    for fstype, parent in (("proc", None), ("sysfs", "ext4"), ("tmpfs", "proc"),
                           ("devtmpfs", "sysfs"), (None, None)):
        assert lib.icd_vet_umount_mount(_s(fstype), _s(parent)) == lib.ICD_VET_FORWARD
    assert lib.icd_vet_umount_mount(b"tmpfs", ffi.NULL) == lib.ICD_VET_NATIVE
    assert lib.icd_vet_umount(c.MNT_FORCE, b"/mnt/x") == lib.ICD_VET_FORWARD
    assert lib.icd_vet_umount(0, b"mnt/x") == lib.ICD_VET_FORWARD
