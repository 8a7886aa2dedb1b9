"""/proc/sys inside a container: the decision per write and what reads show."""

from __future__ import annotations

import errno

import pytest

from interceptd.emulation import procsys as ps
from interceptd.emulation.procsys import Action, Kind


@pytest.mark.parametrize(("path", "kind"), [
    ("kernel/panic", Kind.CONTAINER), ("kernel/yama/ptrace_scope", Kind.CONTAINER),
    ("fs/file-max", Kind.MAX), ("net/core/somaxconn", Kind.NAMESPACED),
    ("net/netfilter/nf_conntrack_max", Kind.MAX),
    ("kernel/cap_last_cap", Kind.READONLY), ("kernel/ngroups_max", Kind.READONLY),
    ("net/ipv4/ip_forward", Kind.NAMESPACED), ("kernel/hostname", Kind.NAMESPACED),
    ("kernel/shmmax", Kind.NAMESPACED), ("kernel/sem", Kind.NAMESPACED),
    ("fs/mqueue/msg_max", Kind.NAMESPACED), ("user/max_user_namespaces", Kind.NAMESPACED),
    ("kernel/ns_last_pid", Kind.NAMESPACED),
    ("kernel/core_pattern", Kind.HOST), ("vm/overcommit_memory", Kind.HOST),
    ("kernel/modprobe", Kind.HOST), ("fs/protected_symlinks", Kind.HOST),
])
def test_classify(path, kind):
    assert ps.classify(path) is kind


@pytest.mark.parametrize(("raw", "norm"), [
    ("/proc/sys/kernel/panic", "kernel/panic"), ("kernel.panic", "kernel/panic"),
    ("kernel//panic", "kernel/panic"), ("net/../kernel/panic", "kernel/panic"),
    ("../etc/passwd", None), ("/etc/passwd", None), ("", None), ("a\0b", None),
])
def test_normalize(raw, norm):
    assert ps.normalize(raw) == norm


def test_a_dotdot_path_is_judged_by_where_it_leads():
    # "net/../kernel/core_pattern" is not a net/* sysctl and must not pass through.
    d, _ = ps.decide_write("net/../kernel/core_pattern", "|/x", {}, "core")
    assert (d.action, d.errno) == (Action.DENY, errno.EACCES)


def test_container_only_value_is_seen_by_that_container_alone():
    host = "0\n"
    mine: dict[str, str] = {}
    sibling: dict[str, str] = {}
    d, mine = ps.decide_write("kernel/panic", "10\n", mine, host)
    assert d.action is Action.STORE and d.value == "10" and mine == {"kernel/panic": "10"}
    assert ps.render_read("kernel/panic", mine, host) == b"10\n"
    assert ps.render_read("kernel/panic", sibling, host) == b"0\n"  # sibling: host's
    assert host == "0\n"  # nothing tells the caller to write the host


@pytest.mark.parametrize(("path", "value"), [
    ("kernel/panic_on_oops", "2"), ("kernel/kptr_restrict", "3"),
    ("kernel/dmesg_restrict", "-1"), ("kernel/pid_max", "100"), ("kernel/sysrq", "1024"),
    ("kernel/yama/ptrace_scope", "4"), ("kernel/panic", "abc"), ("kernel/panic", ""),
    ("kernel/panic", "1 2"), ("kernel/printk", "1 2 3 4 5"), ("kernel/panic", "1" * 300),
])
def test_container_only_values_are_validated(path, value):
    d, st = ps.decide_write(path, value, {}, "1")
    assert (d.action, d.errno, st) == (Action.DENY, errno.EINVAL, {})


def test_printk_keeps_unwritten_fields_and_prints_tabs():
    d, st = ps.decide_write("kernel/printk", "7", {}, "4\t4\t1\t7\n")
    assert d.value == "7\t4\t1\t7" and ps.render_read("kernel/printk", st, "x") == b"7\t4\t1\t7\n"


def test_ptrace_scope_3_is_sticky():
    d, st = ps.decide_write("kernel/yama/ptrace_scope", "3", {}, "1")
    assert d.action is Action.STORE
    d, st2 = ps.decide_write("kernel/yama/ptrace_scope", "0", st, "1")
    assert (d.action, d.errno, st2) == (Action.DENY, errno.EINVAL, st)
    d, _ = ps.decide_write("kernel/yama/ptrace_scope", "3", st, "1")
    assert d.action is Action.STORE


def test_max_rule_raises_the_host_but_never_lowers_it():
    d, st = ps.decide_write("fs/file-max", "2000000", {}, "1000000\n")
    assert (d.action, d.value) == (Action.RAISE, "2000000")
    assert ps.render_read("fs/file-max", st, "2000000") == b"2000000\n"
    d, st = ps.decide_write("fs/file-max", "500", st, "2000000\n")
    assert d.action is Action.KEEP and "not lowered" in d.reason
    assert ps.render_read("fs/file-max", st, "2000000\n") == b"500\n"  # its own view
    d, _ = ps.decide_write("net/netfilter/nf_conntrack_max", "4096", {}, "4096")
    assert d.action is Action.KEEP  # equal: nothing to raise
    d, _ = ps.decide_write("net/core/somaxconn", "10", {}, "4096")
    assert d.action is Action.PASS  # the container's own network namespace's
    assert set(ps.SERVED) == {*ps.CONTAINER_ONLY, *ps.MAX_RULE, *ps.UTS}
    for bad in ("-1", "1 2", str(1 << 40)):
        d, _ = ps.decide_write("fs/file-max", bad, {}, "10")
        assert (d.action, d.errno) == (Action.DENY, errno.EINVAL)


@pytest.mark.parametrize("path", ["kernel/cap_last_cap", "kernel/ngroups_max",
                                  "kernel/core_pattern", "vm/drop_caches", "kernel/modprobe",
                                  "kernel/randomize_va_space", "fs/suid_dumpable"])
def test_other_sysctls_refuse_writes_with_eacces(path):
    d, st = ps.decide_write(path, "1", {}, "0")
    assert (d.action, d.errno, st) == (Action.DENY, errno.EACCES, {}) and d.reason
    assert ps.render_read(path, {}, "0\n") == b"0\n"  # reads show the host's value


@pytest.mark.parametrize("path", ["net/ipv4/ip_forward", "kernel/hostname",
                                  "fs/mqueue/queues_max", "user/max_net_namespaces"])
def test_namespaced_pass_through(path):
    d, st = ps.decide_write(path, "1", {"kernel/panic": "3"}, None)
    assert (d.action, st) == (Action.PASS, {"kernel/panic": "3"})
    assert ps.render_read(path, {}, "x") is None  # the container's own file answers


def test_state_is_never_mutated_in_place():
    state = {"kernel/panic": "1"}
    _, new = ps.decide_write("kernel/sysrq", "0", state, "16")
    assert state == {"kernel/panic": "1"} and new == {"kernel/panic": "1", "kernel/sysrq": "0"}
