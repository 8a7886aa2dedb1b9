"""The policy's pure decisions for the new mount API, ptrace-class calls and the deny
list, and its public interface (notified/denied lists, registration)."""

from __future__ import annotations

import errno

import pytest

import interceptd.policy as policy
from interceptd.config import Config
from interceptd.handlers import HandlerRegistry, table
from interceptd.kernel import consts as c
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.fdmounts import (
    FdMount,
    MountAttr,
    decide_detached_tree,
    decide_fsopen,
    decide_fspick,
    decide_mount_setattr,
    decide_move_mount,
    decide_open_tree,
)
from interceptd.policy.immutable import snapshot
from interceptd.policy.mounts import MountContext
from interceptd.policy.ptrace import ProcView, decide_ptrace, decide_targets
from tests.unit.policy_samples import RUNC_INIT, RUNC_LATER

IMM = snapshot(MountTable.parse(RUNC_INIT))


def ctx(**kw) -> MountContext:
    return MountContext(table=MountTable.parse(RUNC_LATER), imm=IMM, **kw)


def attached(path: str) -> FdMount:
    e = ctx().table.topmost_at(path)
    assert e is not None
    return FdMount(e, e.dev)


# --- new mount API ----------------------------------------------------------------------


@pytest.mark.parametrize("fs", ["tmpfs", "mqueue", "fuse.x"])
def test_fsopen_allowed_is_performed_with_fd(fs):
    d = decide_fsopen(fs, 0, ctx())
    assert d.kind == "perform" and d.ops[0].op == "fsopen" and d.ops[0].inject_fd


@pytest.mark.parametrize(("fs", "word"), [("proc", "mount(2)"), ("sysfs", "mount(2)"),
                                          ("debugfs", "debugfs"), ("ext4", "block"),
                                          ("overlay", "mount(2)"),
                                          ("nope", "not allowed")])
def test_fsopen_refused(fs, word):
    d = decide_fsopen(fs, 0, ctx())
    assert d.errno == errno.EPERM and word in d.reason


def test_fsopen_cgroup_v1_depends_on_cgroupns():
    assert decide_fsopen("cgroup", 0, ctx(cgroupns_private=False)).errno == errno.EPERM
    assert decide_fsopen("cgroup", 0, ctx()).kind == "perform"


def test_fspick_immutable_refused_own_allowed():
    assert decide_fspick(attached("/proc/sys"), ctx(), {}).errno == errno.EPERM
    assert decide_fspick(attached("/data"), ctx(), {}).errno == errno.EPERM
    assert decide_fspick(attached("/tmp"), ctx(), {}).kind == "perform"


def test_open_tree_continues_except_flat_clones():
    assert decide_open_tree(0, {}).kind == "continue"
    assert decide_open_tree(c.OPEN_TREE_CLONE | c.AT_RECURSIVE, {}).kind == "continue"
    # A non-recursive clone leaves the masks behind (refused in the filter too).
    assert decide_open_tree(c.OPEN_TREE_CLONE, {}).errno == errno.EPERM


def test_move_mount_rules():
    t = ctx()
    assert decide_move_mount(0, attached("/proc/kcore"), t, {}).errno == errno.EPERM
    assert decide_move_mount(0, attached("/proc"), t, {}).errno == errno.EPERM
    assert decide_move_mount(0, attached("/tmp"), t, {}).kind == "perform"
    assert decide_move_mount(0, FdMount(None, "0:99"), t, {}).kind == "perform"
    assert decide_move_mount(0, None, t, {}).errno == errno.EINVAL
    assert decide_move_mount(c.MOVE_MOUNT_SET_GROUP, None, t, {}).kind == "perform"


def test_detached_procfs_must_keep_masks():
    assert decide_detached_tree("tmpfs", True, [], {}) is None
    assert decide_detached_tree("tmpfs", False, [], {}) is None
    assert decide_detached_tree("proc", True, [], {}) is None
    d = decide_detached_tree("proc", True, ["/proc/kcore"], {})
    assert d is not None and d.errno == errno.EPERM and "/proc/kcore" in d.reason
    for fs in ("sysfs", "proc"):
        d = decide_detached_tree(fs, False, [], {})
        assert d is not None and d.errno == errno.EPERM and "partial" in d.reason


def setattr_(target, clr, set_=0, flags=0):
    return decide_mount_setattr(flags, MountAttr(set_, clr, 0, 0), target, ctx(), {})


def test_mount_setattr_attached():
    assert setattr_(attached("/proc/sys"), c.MOUNT_ATTR_RDONLY).errno == errno.EPERM
    assert setattr_(attached("/data"), c.MOUNT_ATTR_NOSUID).errno == errno.EPERM
    # Clearing and setting the same bit keeps it: allowed.
    assert setattr_(attached("/data"), c.MOUNT_ATTR_RDONLY, c.MOUNT_ATTR_RDONLY
                    ).kind == "perform"
    assert setattr_(attached("/tmp"), c.MOUNT_ATTR_RDONLY).kind == "perform"
    assert setattr_(attached("/tmp"), 0, c.MOUNT_ATTR_RDONLY).kind == "perform"


def test_mount_setattr_recursive_checks_the_subtree():
    # / itself is rw, but /data and /proc/sys below it are locked.
    d = setattr_(attached("/"), c.MOUNT_ATTR_RDONLY, flags=c.AT_RECURSIVE)
    assert d.errno == errno.EPERM


def test_mount_setattr_detached_matches_by_superblock():
    proc_dev = attached("/proc").dev
    assert setattr_(FdMount(None, proc_dev), c.MOUNT_ATTR_RDONLY).errno == errno.EPERM
    data_dev = attached("/data").dev
    assert setattr_(FdMount(None, data_dev), c.MOUNT_ATTR_RDONLY).errno == errno.EPERM
    assert setattr_(FdMount(None, "0:99"), c.MOUNT_ATTR_RDONLY).kind == "perform"
    d = setattr_(FdMount(None, "0:99"), c.MOUNT_ATTR_RDONLY, flags=c.AT_RECURSIVE)
    assert d.errno == errno.EPERM and "detached" in d.reason


def test_mount_attr_struct():
    a = MountAttr(1, 2, 3, 4)
    assert MountAttr.unpack(a.pack() + b"\0" * 8) == a
    with pytest.raises(ValueError):
        MountAttr.unpack(b"\0" * 8)


# --- ptrace family ----------------------------------------------------------------------

OWN = ProcView(10, True, True, False, True, True, "/bin/sh", "/")


@pytest.mark.parametrize(("view", "word"), [
    (ProcView(10, False, True, False, True, True), "pid namespace"),
    (ProcView(10, True, False, False, True, True), "user namespace"),
    (ProcView(10, True, True, True, True, True), "host mount namespace"),
    (ProcView(10, True, True, False, False, True, "/memfd:runc (deleted)"), "exe"),
    (ProcView(10, True, True, False, True, False, "/bin/sh", "/sys/fs/cgroup"), "cwd"),
])
def test_outside_or_entering_targets_refused(view, word):
    for req in (c.PTRACE_ATTACH, c.PTRACE_SEIZE, c.PTRACE_POKEDATA):
        d = decide_ptrace(req, view, {})
        assert d.errno == errno.EPERM and word in d.reason
    assert decide_targets("kcmp", [OWN, view], {}).errno == errno.EPERM


def test_own_targets_and_other_requests_continue():
    assert decide_ptrace(c.PTRACE_ATTACH, OWN, {}).kind == "continue"
    assert decide_ptrace(c.PTRACE_TRACEME, None, {}).kind == "continue"
    assert decide_ptrace(c.PTRACE_PEEKDATA, None, {}).kind == "continue"
    assert decide_targets("process_vm_readv", [None], {}).kind == "continue"
    assert decide_targets("kcmp", [OWN, OWN], {}).kind == "continue"


# --- deny list and the public interface -------------------------------------------------


def names(rules):
    return {n for r in rules for n in r["names"]}


def test_deny_list_shape():
    rules = policy.denied_syscalls(None)
    for r in rules:
        assert r["action"] == "SCMP_ACT_ERRNO" and r["errnoRet"] > 0
        assert set(r) <= {"names", "action", "errnoRet", "args"}
    everything = names(rules)
    for n in ("kexec_load", "kexec_file_load", "init_module", "finit_module",
              "delete_module", "open_by_handle_at", "bpf", "perf_event_open", "iopl",
              "ioperm", "swapon", "swapoff", "syslog", "acct", "settimeofday",
              "clock_settime", "quotactl", "lookup_dcookie", "seccomp",
              "request_key"):
        assert n in everything, n
    seccomp = next(r for r in rules if r["names"] == ["seccomp"])
    assert seccomp["errnoRet"] == errno.EINVAL
    assert seccomp["args"] == [{"index": 1, "value": 8, "valueTwo": 8,
                                "op": "SCMP_CMP_MASKED_EQ"}]
    perf = [r for r in rules if r["names"] == ["perf_event_open"]]
    # pid is an int: its sign bit (bit 31), whatever the upper half of the register holds.
    assert {"index": 1, "value": 0x80000000, "valueTwo": 0x80000000,
            "op": "SCMP_CMP_MASKED_EQ"} in perf[0]["args"]
    for n in ("io_uring_setup", "io_uring_enter", "io_uring_register", "umount", "uselib",
              "nfsservctl", "vm86", "vm86old", "stime", "clock_settime64"):
        assert n in everything, n
    vsock = next(r for r in rules if r["names"] == ["socket"])
    assert vsock["args"] == [{"index": 0, "value": 0x3F, "valueTwo": 40,
                              "op": "SCMP_CMP_MASKED_EQ"}]
    uffd = next(r for r in rules if r["names"] == ["userfaultfd"])
    assert uffd["args"] == [{"index": 0, "value": 1, "valueTwo": 0,
                             "op": "SCMP_CMP_MASKED_EQ"}]


def test_keyring_default_allows_keyctl_not_request_key():
    default = names(policy.denied_syscalls(None))
    assert "keyctl" not in default and "add_key" not in default
    assert "request_key" in default
    off = names(policy.denied_syscalls(Config(sections={"policy": {"keyring": False}})))
    assert {"keyctl", "add_key", "request_key"} <= off


def test_config_switches():
    cfg = Config(sections={"policy": {"keyring": True, "bpf": True, "clock": False,
                                      "ptrace": False}})
    everything = names(policy.denied_syscalls(cfg))
    assert "keyctl" not in everything and "add_key" not in everything
    assert "request_key" in everything and "bpf" not in everything
    assert "adjtimex" in everything
    notified = policy.notified_syscalls(cfg)
    assert "ptrace" not in notified and "adjtimex" not in notified and "mount" in notified


def test_notified_and_registered_agree():
    notified = policy.notified_syscalls(None)
    # Argument-conditioned denies (open_tree's flat clone) may share a notified name.
    assert not set(notified) & names(r for r in policy.denied_syscalls(None)
                                     if not r.get("args"))
    reg = HandlerRegistry()
    table.register(reg, None)
    assert reg.names() == sorted(notified)
    for n in ("mount", "umount2", "fsopen", "fspick", "open_tree", "move_mount",
              "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev",
              "pidfd_getfd", "kcmp", "sysinfo", "adjtimex", "clock_adjtime"):
        assert n in notified
    assert "fsconfig" not in notified and "fsmount" not in notified


def test_notify_rules_cover_the_same_calls():
    rules = policy.notify_rules(None)
    assert names(rules) == set(policy.notified_syscalls(None))
    assert all(r["action"] == "SCMP_ACT_NOTIFY" for r in rules)
    ptrace = [r for r in rules if r["names"] == ["ptrace"]]
    assert {r["args"][0]["valueTwo"] for r in ptrace} == {
        c.PTRACE_ATTACH, c.PTRACE_SEIZE, c.PTRACE_POKETEXT, c.PTRACE_POKEDATA,
        c.PTRACE_POKEUSER}
    cfg = Config(sections={"policy": {"ptrace": False}})
    assert "ptrace" not in names(policy.notify_rules(cfg))
