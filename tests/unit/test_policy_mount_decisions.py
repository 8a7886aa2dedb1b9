"""mount(2)/umount2(2) decisions and the mount table, without a kernel."""

from __future__ import annotations

import errno

import pytest

from interceptd.kernel import consts as c
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.immutable import ImmutableSet, snapshot
from interceptd.policy.mounts import (
    MountCall,
    MountContext,
    UmountCall,
    decide_mount,
    decide_umount,
)
from tests.unit.policy_samples import RUNC_INIT, RUNC_LATER, UNSHARED

INIT = MountTable.parse(RUNC_INIT)
IMM = snapshot(INIT)


def ctx(text: str = RUNC_LATER, **kw) -> MountContext:
    return MountContext(table=MountTable.parse(text), imm=IMM, **kw)


def at(context: MountContext, path: str):
    e = context.table.topmost_at(path)
    assert e is not None, path
    return e


def remount(context: MountContext, path: str, flags: int):
    return decide_mount(
        MountCall(None, path, None, c.MS_REMOUNT | flags, None, target_mount=at(context, path)),
        context,
    )


def umount(context: MountContext, path: str, flags: int = 0):
    return decide_umount(UmountCall(path, flags, target_mount=at(context, path)), context)


# --- mount table -----------------------------------------------------------------------


def test_snapshot_classifies_proc_sys_and_masks():
    assert IMM.fsroot_devs == {"0:41", "0:22"}
    kinds = {m.mountpoint: m.kind for m in IMM.mounts}
    assert kinds["/proc"] == "fsroot" and kinds["/sys"] == "fsroot"
    assert kinds["/proc/sys"] == "readonly" and kinds["/proc/bus"] == "readonly"
    assert kinds["/proc/acpi"] == "mask" and kinds["/proc/kcore"] == "mask"
    assert kinds["/sys/firmware"] == "mask" and kinds["/sys/fs/cgroup"] == "sub"
    assert kinds["/data"] == "mount"


def test_locked_attrs_follow_bind_copies_beneath_the_root():
    copy = MountTable.parse(UNSHARED).topmost_at("/mnt/copy")
    assert IMM.locked_attrs(copy) & c.MOUNT_ATTR_RDONLY
    assert not IMM.locked_attrs(MountTable.parse(UNSHARED).topmost_at("/tmp"))


def test_immutable_set_round_trips():
    again = ImmutableSet.from_dict(IMM.to_dict())
    assert again.to_dict() == IMM.to_dict()


def test_subtree_and_topmost():
    t = ctx()
    proc = at(t, "/proc")
    assert {e.mountpoint for e in t.table.subtree(proc)} >= {"/proc/sys", "/proc/kcore"}
    assert t.table.topmost_at("/nowhere") is None


# --- remount ---------------------------------------------------------------------------


def test_remount_ro_volume_rw_refused():
    d = remount(ctx(), "/data", c.MS_BIND | c.MS_NOSUID | c.MS_NODEV)
    assert d.kind == "errno" and d.errno == errno.EPERM and "ro" in d.reason


def test_remount_clearing_nosuid_refused():
    d = remount(ctx(), "/data", c.MS_BIND | c.MS_RDONLY | c.MS_NODEV)
    assert d.errno == errno.EPERM and "nosuid" in d.reason


def test_remount_keeping_flags_is_performed():
    d = remount(ctx(), "/data", c.MS_BIND | c.MS_RDONLY | c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC)
    assert d.kind == "perform" and d.ops[0].op == "mount"


def test_remount_proc_sys_rw_refused_also_in_a_copy():
    assert remount(ctx(), "/proc/sys", c.MS_BIND).errno == errno.EPERM
    u = ctx(UNSHARED)
    assert remount(u, "/mnt/sys", c.MS_BIND).errno == errno.EPERM
    assert remount(u, "/mnt/copy", c.MS_BIND | c.MS_NOSUID | c.MS_NODEV).errno == errno.EPERM


def test_remount_sys_rw_refused():
    assert remount(ctx(), "/sys", c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC).errno == errno.EPERM


def test_remount_own_mount_both_ways():
    assert remount(ctx(), "/tmp", c.MS_RDONLY).kind == "perform"
    assert remount(ctx(), "/tmp", 0).kind == "perform"


def test_remount_rw_to_ro_of_attach_mount_allowed():
    assert remount(ctx(), "/dev/shm", c.MS_RDONLY | c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC
                   ).kind == "perform"
    assert remount(ctx(), "/dev/shm", c.MS_NOSUID).errno == errno.EPERM


def test_remount_of_nothing_is_einval():
    d = decide_mount(MountCall(None, "/x", None, c.MS_REMOUNT, None), ctx())
    assert d.errno == errno.EINVAL


# --- umount ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/proc", "/sys"])
def test_umount_proc_sys_ebusy(path):
    assert umount(ctx(), path).errno == errno.EBUSY
    assert umount(ctx(), path, c.MNT_DETACH).errno == errno.EBUSY


@pytest.mark.parametrize(
    "path", ["/proc/kcore", "/proc/keys", "/proc/acpi", "/proc/sys", "/sys/firmware",
             "/sys/fs/cgroup", "/mnt/p/kcore", "/mnt/p/sys"]
)
def test_umount_masks_and_readonly_paths_refused(path):
    d = umount(ctx(), path, c.MNT_DETACH)
    assert d.errno == errno.EPERM and "reveal" in d.reason


def test_umount_mask_after_unshare_refused():
    u = ctx(UNSHARED)
    assert umount(u, "/proc/kcore").errno == errno.EPERM
    assert umount(u, "/proc").errno == errno.EBUSY


def test_umount_own_mounts_performed():
    for path in ("/tmp", "/data", "/dev/shm"):
        d = umount(ctx(), path)
        assert d.kind == "perform" and d.ops[0].op == "umount2" and d.ops[0].args[0] == path


def test_umount_daemon_procfs_takes_its_masks():
    d = umount(ctx(), "/mnt/p")
    assert d.kind == "perform" and d.ops[0].args[1] & c.MNT_DETACH


def test_umount_not_a_mount_and_bad_flags():
    assert decide_umount(UmountCall("/x", 0), ctx()).errno == errno.EINVAL
    assert umount(ctx(), "/tmp", 0x100).errno == errno.EINVAL


# --- move, bind, propagation ------------------------------------------------------------


def move(context, path):
    return decide_mount(
        MountCall(path, "/elsewhere", None, c.MS_MOVE, None, source_mount=at(context, path)),
        context,
    )


@pytest.mark.parametrize("path", ["/proc", "/proc/kcore", "/proc/acpi", "/sys", "/mnt/p"])
def test_move_of_protected_refused(path):
    assert move(ctx(), path).errno == errno.EPERM


def test_move_own_mount_performed():
    d = move(ctx(), "/tmp")
    assert d.kind == "perform" and d.ops[0].args[3] == c.MS_MOVE


def test_bind_is_always_recursive():
    t = ctx()
    d = decide_mount(
        MountCall("/proc", "/mnt/x", None, c.MS_BIND, None, source_mount=at(t, "/proc")), t
    )
    assert d.kind == "perform" and d.ops[0].args[3] & c.MS_REC and "masks" in d.reason
    d = decide_mount(MountCall("/tmp", "/mnt/y", None, c.MS_BIND, None), t)
    assert d.kind == "perform" and d.ops[0].args[3] == c.MS_BIND | c.MS_REC


def test_propagation_change_continues():
    d = decide_mount(MountCall(None, "/", None, c.MS_REC | c.MS_SLAVE, None), ctx())
    assert d.kind == "continue"
    # A propagation flag mixed with anything else is not a pure propagation change.
    d = decide_mount(MountCall("x", "/t", "ext4", c.MS_SHARED | c.MS_RDONLY, None), ctx())
    assert d.errno == errno.EPERM


# --- new mounts -------------------------------------------------------------------------


def new(fstype, flags=0, data=None, **kw):
    return decide_mount(MountCall(fstype, "/mnt", fstype, flags, data), ctx(**kw))


@pytest.mark.parametrize("fs", ["tmpfs", "mqueue", "devpts", "ramfs"])
def test_allowed_filesystems_performed(fs):
    d = new(fs, c.MS_NOSUID, "size=1m")
    assert d.kind == "perform"
    assert d.ops[0].args == (fs, "/mnt", fs, c.MS_NOSUID, "size=1m")


def test_fuse_performed_with_the_callers_fd():  # test_policy_holes.py has the details
    d = new("fuse.sshfs", c.MS_NOSUID, "fd=3,rootmode=40000")
    assert d.kind == "perform" and d.ops[0].op == "mount_fuse"


def test_magic_flag_value_is_stripped():
    d = new("tmpfs", c.MS_MGC_VAL | c.MS_NODEV)
    assert d.kind == "perform" and d.ops[0].args[3] == c.MS_NODEV


@pytest.mark.parametrize(
    ("fs", "word"),
    [("debugfs", "debugfs"), ("tracefs", "tracing"), ("securityfs", "LSM"), ("bpf", "BPF"),
     ("configfs", "configfs"), ("ext4", "block-device"), ("xfs", "block-device"),
     ("btrfs", "block-device"), ("weirdfs", "not allowed"), ("", "not allowed")],
)
def test_refused_filesystems_have_reasons(fs, word):
    d = new(fs)
    assert d.errno == errno.EPERM and word in d.reason


def test_cgroup_v1_only_in_private_cgroupns():
    assert new("cgroup", cgroupns_private=False).errno == errno.EPERM
    assert "release_agent" in new("cgroup", cgroupns_private=False).reason
    assert new("cgroup", cgroupns_private=True).kind == "perform"
    assert new("cgroup2").kind == "perform"


def test_procfs_is_mounted_then_masked():
    d = new("proc", c.MS_NOSUID | c.MS_RDONLY)
    assert d.kind == "perform" and d.details["managed"] == "proc"
    ops = [(o.op, o.args) for o in d.ops]
    assert ops[0] == ("mount", ("proc", "/mnt", "proc", c.MS_NOSUID | c.MS_RDONLY, None))
    assert ("mask", ("/mnt/kcore",)) in ops and ("readonly", ("/mnt/sys",)) in ops
    assert not any(a[0].startswith("/mnt/firmware") for _, a in ops)


def test_sysfs_gets_sys_masks_and_emulated_files():
    d = new("sysfs", emulated_paths={"/sys/devices/system/cpu/online": "/run/x/online"})
    ops = [(o.op, o.args) for o in d.ops]
    assert ("mask", ("/mnt/firmware",)) in ops
    assert ("emulated", ("/run/x/online", "/mnt/devices/system/cpu/online")) in ops
    assert not any(o == "readonly" for o, _ in ops)


# --- what the native helper (csrc/native.c) may decide: never more than the policy ---------


def test_native_fstypes_are_ones_the_policy_mounts_in_user_and_mount_ns_only():
    from interceptd.handlers.mount import NATIVE_FSTYPES
    from interceptd.handlers.scope import NS_MOUNT, ns_for

    assert set(NATIVE_FSTYPES) == {"devpts", "ramfs", "tmpfs"}
    for t in NATIVE_FSTYPES:
        assert ns_for(t) == NS_MOUNT
        for flags in (0, c.MS_RDONLY | c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC, c.MS_MGC_VAL):
            d = decide_mount(MountCall("t", "/mnt/x", t, flags, "size=1k"), ctx())
            assert d.kind == "perform" and [o.op for o in d.ops] == ["mount"], (t, flags, d)
            assert d.reason == f"{t} allowed"


def test_native_umount_rule_matches_decide_umount():
    """The helper umounts a mount that is no procfs/sysfs and whose parent is none; the
    policy allows exactly those (flags without MNT_FORCE)."""
    context = ctx()
    for e in context.table.entries:
        parent = context.table.parent(e)
        native = e.fstype not in ("proc", "sysfs") and (
            parent is None or parent.fstype not in ("proc", "sysfs"))
        d = decide_umount(UmountCall(e.mountpoint, 0, e), context)
        if native:
            assert d.kind == "perform", (e, d)
            assert d.reason == "umount of the container's own mount"


def test_nested_proc_stays_elsewhere_removable():
    """A procfs the daemon mounted for a nested runtime: at /proc (the nested container's
    own) EBUSY like the container's; at another place it goes with its submounts."""
    from interceptd.kernel.mountinfo import MountEntry

    context = ctx()
    for mp, want in (("/proc", errno.EBUSY), ("/mnt/p", None)):
        e = MountEntry(mount_id=900, parent_id=1, dev="0:99", root="/", mountpoint=mp,
                       options="rw", optional=(), fstype="proc", source="proc",
                       super_options="rw")
        d = decide_umount(UmountCall(mp, c.MNT_DETACH, target_mount=e), context)
        if want is None:
            assert d.kind == "perform" and "submounts" in d.reason
        else:
            assert d.errno == want and "nested" in d.reason
