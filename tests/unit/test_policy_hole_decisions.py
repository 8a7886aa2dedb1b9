"""Pure decisions that close issue 8's mount holes: flat open_tree clones (refused in the
filter and by the daemon), masks made unbindable (a recursive copy would leave them out),
procfs/sysfs superblock reconfiguration, and FUSE's caller-side fd."""

from __future__ import annotations

import errno

import interceptd.policy as policy
from interceptd.kernel import consts as c
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.fdmounts import FdMount, MountAttr, decide_fspick, decide_mount_setattr
from interceptd.policy.immutable import snapshot
from interceptd.policy.mounts import MountCall, MountContext, decide_mount, overlay_layers
from tests.unit.policy_samples import RUNC_INIT, RUNC_LATER

IMM = snapshot(MountTable.parse(RUNC_INIT))


def ctx() -> MountContext:
    return MountContext(table=MountTable.parse(RUNC_LATER), imm=IMM)


def at(path: str):
    e = ctx().table.topmost_at(path)
    assert e is not None, path
    return e


def mount(target: str, flags: int, fstype: str | None = None, data: str | None = None,
          resolved: bool = True):
    return decide_mount(MountCall("src", target, fstype, flags, data,
                                  target_mount=at(target) if resolved else None), ctx())


def matches(rule: dict, flags: int) -> bool:
    """Whether a seccomp rule's (masked-equality) conditions match open_tree's flags."""
    return all(flags & a["value"] == a["valueTwo"] for a in rule["args"] if a["index"] == 2)


# --- open_tree in the filter -----------------------------------------------------------


def test_flat_clone_denied_in_the_filter_recursive_clone_notified_only():
    deny = [r for r in policy.denied_syscalls(None) if r["names"] == ["open_tree"]]
    assert len(deny) == 1 and deny[0]["errnoRet"] == errno.EPERM
    notify = [r for r in policy.notify_rules(None) if r["names"] == ["open_tree"]]
    clone, rec = c.OPEN_TREE_CLONE, c.OPEN_TREE_CLONE | c.AT_RECURSIVE
    for flags in (clone, clone | c.OPEN_TREE_CLOEXEC, clone | c.AT_EMPTY_PATH):
        assert matches(deny[0], flags) and not any(matches(r, flags) for r in notify)
    for flags in (0, rec, rec | c.OPEN_TREE_CLOEXEC, c.AT_RECURSIVE):
        assert not matches(deny[0], flags)
    assert all(matches(r, rec) for r in notify)
    # Never both: libseccomp keeps one action per syscall and argument value.
    assert not any(matches(r, 0) for r in notify)


# --- unbindable ------------------------------------------------------------------------


def test_mask_made_unbindable_refused():
    for path in ("/proc/kcore", "/proc/sys", "/sys/firmware", "/sys/fs/cgroup"):
        d = mount(path, c.MS_UNBINDABLE)
        assert d.errno == errno.EPERM and "unbindable" in d.reason, path


def test_recursive_unbindable_over_masks_refused_own_tree_performed():
    assert mount("/proc", c.MS_UNBINDABLE | c.MS_REC).errno == errno.EPERM
    assert mount("/", c.MS_UNBINDABLE | c.MS_REC).errno == errno.EPERM
    d = mount("/tmp", c.MS_UNBINDABLE | c.MS_REC)
    assert d.kind == "perform" and d.ops[0].op == "unbindable" and d.ops[0].args == (True,)
    # /proc itself (not its masks): a copy of / then leaves the whole of /proc out.
    assert mount("/proc", c.MS_UNBINDABLE).kind == "perform"


def test_other_propagation_changes_still_continue():
    for flags in (c.MS_PRIVATE, c.MS_SLAVE | c.MS_REC, c.MS_SHARED):
        assert mount("/proc/kcore", flags, resolved=False).kind == "continue"


def test_unbindable_of_nothing_is_einval():
    assert mount("/x", c.MS_UNBINDABLE, resolved=False).errno == errno.EINVAL


def test_mount_setattr_unbindable():
    unbind = MountAttr(0, 0, c.MS_UNBINDABLE, 0)
    kc = at("/proc/kcore")
    assert decide_mount_setattr(0, unbind, FdMount(kc, kc.dev), ctx(), {}).errno == errno.EPERM
    tmp = at("/tmp")
    assert decide_mount_setattr(0, unbind, FdMount(tmp, tmp.dev), ctx(), {}).kind == "perform"
    root = at("/")
    assert decide_mount_setattr(c.AT_RECURSIVE, unbind, FdMount(root, root.dev), ctx(),
                                {}).errno == errno.EPERM
    detached = FdMount(None, "0:99")
    assert decide_mount_setattr(0, unbind, detached, ctx(), {}, True).errno == errno.EPERM
    assert decide_mount_setattr(c.AT_RECURSIVE, unbind, detached, ctx(), {}).errno == \
        errno.EPERM
    assert decide_mount_setattr(0, unbind, detached, ctx(), {}).kind == "perform"


# --- procfs/sysfs superblocks ----------------------------------------------------------


def test_fspick_of_procfs_sysfs_refused_whatever_the_mount():
    # A detached clone of /proc is in no table: recognised by its superblock's type.
    assert decide_fspick(FdMount(None, "0:199"), ctx(), {}, "proc").errno == errno.EPERM
    assert decide_fspick(FdMount(None, "0:199"), ctx(), {}, "sysfs").errno == errno.EPERM
    proc = at("/proc")
    assert decide_fspick(FdMount(proc, proc.dev), ctx(), {}).errno == errno.EPERM
    assert decide_fspick(FdMount(None, "0:199"), ctx(), {}, "").kind == "perform"


def test_plain_remount_of_procfs_with_options_refused():
    for data in ("hidepid=0", "subset=", "rw"):
        d = mount("/proc", c.MS_REMOUNT | c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC, data=data)
        assert d.errno == errno.EPERM and "superblock" in d.reason, data
    assert mount("/tmp", c.MS_REMOUNT, data="size=1m").kind == "perform"


# --- FUSE ------------------------------------------------------------------------------


def test_fuse_mount_takes_the_callers_fd():
    d = mount("/mnt", 0, "fuse", "fd=7,rootmode=40000,user_id=0,group_id=0", resolved=False)
    assert d.kind == "perform"
    assert d.ops[0].op == "mount_fuse"
    assert d.ops[0].args == ("src", "/mnt", "fuse", 0, "rootmode=40000,user_id=0,group_id=0", 7)
    d = mount("/mnt", 0, "fuse.sshfs", "rootmode=40000,fd=3", resolved=False)
    assert d.ops[0].op == "mount_fuse" and d.ops[0].args[4:] == ("rootmode=40000", 3)


def test_fuse_mount_without_one_clear_fd_refused():
    for data in (None, "rootmode=40000", "fd=3,fd=4", "fd=x", "fd=-1"):
        d = mount("/mnt", 0, "fuse", data, resolved=False)
        assert d.errno == errno.EINVAL and "fd=" in d.reason, data


# --- overlay: layers by fd, none on procfs/sysfs -----------------------------------------


def test_overlay_layers_become_fd_keys_in_order():
    got = overlay_layers("lowerdir=/a:/b::/d1::/d2,upperdir=/u,workdir=/w,index=off,userxattr")
    assert got == ([("lowerdir+", "/a"), ("lowerdir+", "/b"), ("datadir+", "/d1"),
                    ("datadir+", "/d2"), ("upperdir", "/u"), ("workdir", "/w")],
                   ["index=off", "userxattr"])
    assert overlay_layers("lowerdir+=/a,lowerdir+=b")[0] == [("lowerdir+", "/a"),
                                                              ("lowerdir+", "b")]


def test_overlay_performed_by_fd_or_refused():
    d = mount("/mnt", 0, "overlay", "lowerdir=/a:/b,upperdir=/u,workdir=/w", resolved=False)
    assert d.kind == "perform" and d.ops[0].op == "overlay"
    assert d.ops[0].args[3][0] == ("lowerdir+", "/a")
    for data in (None, "upperdir=/u,workdir=/w", "lowerdir=/a\\:b", "lowerdir=/a::"):
        assert mount("/mnt", 0, "overlay", data, resolved=False).errno == errno.EINVAL, data
