"""Reading a container's cgroups into a snapshot: v1, v2 and hybrid, on recorded trees."""

from __future__ import annotations

import pytest

from interceptd.emulation import cgpaths, hostfacts, snapshot, tasks
from tests.unit.emulation_data import DATA, load, paths_of

MiB = 1 << 20


def test_proc_cgroup_and_mountinfo_formats():
    pc = cgpaths.parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/a\n1:name=systemd:/s\n0::/a/b\n")
    assert pc == {"memory": "/a/b", "cpu": "/a", "cpuacct": "/a", "name=systemd": "/s",
                  "": "/a/b"}
    mi = cgpaths.parse_mountinfo((DATA / "v1-cpuset0" / "mountinfo").read_text())
    assert mi.v2 == "/sys/fs/cgroup/unified"
    assert mi.v1["memory"] == "/sys/fs/cgroup/memory" and "name=systemd" not in mi.v1


def test_paths_that_leave_their_hierarchy_are_not_read():
    mounts = cgpaths.Mounts({"memory": "/sys/fs/cgroup/memory"}, "/sys/fs/cgroup/unified")
    p = cgpaths.locate({"memory": "/../../../etc", "": "/a/../../x"}, mounts, root="/r")
    assert p.v1 == {} and p.v2 is None
    p = cgpaths.locate({"memory": "/a/./b"}, mounts, root="/r")
    assert p.v1["memory"].cgroup == "/r/sys/fs/cgroup/memory/a/b"
    assert p.v1["memory"].chain() == ["/r/sys/fs/cgroup/memory/a/b",
                                      "/r/sys/fs/cgroup/memory/a", "/r/sys/fs/cgroup/memory"]


def test_hybrid_recording_256m_cpuset0():
    snap, host, _ = load("v1-cpuset0")
    assert snap.layout == "hybrid"
    # The limit is on the parent: the child's own file says unlimited.
    assert snap.mem_limited and snap.mem_limit == 256 * MiB
    assert 48 * MiB < snap.mem_usage < 256 * MiB
    assert snap.mem_stats["anon"] >= 48 * MiB and snap.mem_stats["file"] > 0
    assert snap.swap_accounted and snap.swap_limit == 64 * MiB
    assert snap.cpuset == (0,) and snap.cpus == (0,) and snap.cpu_quota is None
    assert snap.cpu_user_us + snap.cpu_system_us > 0
    assert snap.io[(254, 0)].wbytes >= 8 * MiB and snap.io[(254, 0)].wios > 0
    assert snap.pids_current is not None and snap.pids_current >= 3
    assert snap.tasks is not None and snap.tasks.threads == snap.pids_current
    # Its own pid namespace: pids 1, 2, ... in it.
    assert 1 <= snap.tasks.last_pid < 20
    assert snap.start is not None and 0 < snap.start < host.uptime + 60


def test_same_recording_read_as_v1_alone():
    hybrid, _, _ = load("v1-cpuset0")
    v1, _, _ = load("v1-cpuset0", "v1")
    assert v1.layout == "v1"
    assert (v1.mem_limit, v1.cpus, v1.io, v1.tasks) == (
        hybrid.mem_limit, hybrid.cpus, hybrid.io, hybrid.tasks)


def test_unified_tree_of_the_hybrid_host_read_as_v2():
    # This host enables no controller in its unified tree: memory is the host's, cpu time
    # still comes from cpu.stat (kept for every cgroup), tasks from cgroup.threads.
    snap, host, _ = load("v1-cpuset0", "v2")
    hybrid, _, _ = load("v1-cpuset0")
    assert snap.layout == "v2" and not snap.mem_accounted
    assert snap.mem_limit == host.mem_kb("MemTotal") << 10
    assert snap.cpuset == host.online
    assert snap.cpu_user_us + snap.cpu_system_us > 0
    assert snap.tasks is not None and snap.tasks.threads == hybrid.tasks.threads


def test_quota_150_on_two_cpus_shows_two():
    snap, host, _ = load("v1-quota150")
    assert snap.cpu_quota == 1.5 and snap.cpuset == (0, 1) and snap.cpus == (0, 1)
    # No memory limit anywhere: the host's memory, and it is not "limited".
    assert not snap.mem_limited and snap.mem_limit == host.mem_kb("MemTotal") << 10


def test_quota_50_under_a_150_parent_shows_one():
    snap, _, _ = load("v1-quota50")
    assert snap.cpu_quota == 0.5 and snap.cpus == (0,)
    assert snap.mem_limit == 1024 * MiB


def test_v2_swap_quota_and_cpuset():
    snap, _, _ = load("v2-swap")
    assert snap.layout == "v2" and snap.mem_limit == 256 * MiB and snap.mem_limited
    assert (snap.swap_accounted, snap.swap_limit, snap.swap_usage) == (
        True, 64 * MiB, 16 * MiB)
    assert snap.cpu_quota == 1.5 and snap.cpuset == (1,) and snap.cpus == (1,)
    assert (snap.cpu_user_us, snap.cpu_nice_us, snap.cpu_system_us) == (
        8_000_000, 1_000_000, 3_500_000)
    assert snap.io[(254, 0)].rios == 16 and snap.io[(7, 0)].rbytes == 0
    assert snap.tasks == snapshot.tasks.TaskSummary(3, 1, 1, 8, False)
    assert snap.start == 2000.0 and snap.pids_current == 3


def test_boot_and_last_pid_given_by_the_caller_win():
    _, host, _ = load("v2-swap")
    snap = snapshot.read_snapshot(paths_of("v2-swap"), host, init_pid=4242,
                                  proc=str(DATA / "v2-swap" / "root" / "proc"), boot=1999.5,
                                  ns_last_pid=123)
    assert snap.start == 1999.5 and snap.tasks is not None and snap.tasks.last_pid == 123


def test_v2_limits_come_from_the_parent():
    snap, _, _ = load("v2-nested")
    assert snap.mem_limit == 128 * MiB and snap.mem_limited
    assert not snap.swap_accounted
    assert snap.cpu_quota == 0.5 and snap.cpus == (0,)


def test_limit_above_the_host_is_the_host(tmp_path):
    root = tmp_path / "sys/fs/cgroup/c"
    root.mkdir(parents=True)
    (root / "memory.max").write_text(f"{1 << 50}\n")
    (root / "memory.current").write_text("1000\n")
    paths = cgpaths.locate({"": "/c"}, cgpaths.Mounts({}, "/sys/fs/cgroup"), str(tmp_path))
    _, host, _ = load("v2-nested")
    snap = snapshot.read_snapshot(paths, host, parts=frozenset({"memory"}))
    assert snap.mem_limit == host.mem_kb("MemTotal") << 10 and not snap.mem_limited


def test_missing_files_give_an_unlimited_view(tmp_path):
    paths = cgpaths.locate({"memory": "/gone", "cpu": "/gone", "": "/gone"},
                           cgpaths.Mounts({"memory": "/m", "cpu": "/c"}, "/u"), str(tmp_path))
    _, host, _ = load("v2-nested")
    snap = snapshot.read_snapshot(paths, host, init_pid=1, proc=str(tmp_path))
    assert snap.mem_limit == host.mem_kb("MemTotal") << 10 and snap.cpus == host.online
    assert snap.start is None and snap.tasks == snapshot.tasks.TaskSummary()
    assert paths_of("v2-nested").layout == "v2"


def test_a_controller_named_twice_is_refused():
    # A cgroup named "x\n4:memory:/" would otherwise point the snapshot at the host's root.
    with pytest.raises(ValueError, match="named twice"):
        cgpaths.parse_proc_cgroup("4:memory:/docker/c/x\n4:memory:/\n0::/docker/c\n")
    with pytest.raises(ValueError, match="named twice"):
        cgpaths.parse_proc_cgroup("0::/a\n0::/\n")
    with pytest.raises(ValueError, match="not a"):
        cgpaths.parse_proc_cgroup("0::/a\ngarbage\n")


def test_task_count_is_bounded(tmp_path, monkeypatch):
    root = tmp_path / "sys/fs/cgroup/c"
    for i in range(5):
        d = root / f"n{i}"
        d.mkdir(parents=True)
        (d / "cgroup.threads").write_text(f"{100 + i}\n")
        (tmp_path / "proc" / str(100 + i)).mkdir(parents=True)
        (tmp_path / "proc" / str(100 + i) / "status").write_text(
            f"State:\tR (running)\nNSpid:\t{100 + i}\t{i + 1}\n")
    paths = cgpaths.locate({"": "/c"}, cgpaths.Mounts({}, "/sys/fs/cgroup"), str(tmp_path))
    full = tasks.summarize(paths, str(tmp_path / "proc"))
    assert full == tasks.TaskSummary(5, 5, 0, 5, False)
    monkeypatch.setattr(tasks, "MAX_CGROUPS", 3)
    cut = tasks.summarize(paths, str(tmp_path / "proc"))
    assert cut.truncated and cut.threads == 2  # the root and two children were walked
    monkeypatch.setattr(tasks, "MAX_CGROUPS", 1024)
    monkeypatch.setattr(tasks, "MAX_TASKS", 3)
    cut = tasks.summarize(paths, str(tmp_path / "proc"))
    assert cut.truncated and cut.threads == 3


@pytest.mark.parametrize(("text", "cpus"), [
    ("0\n", (0,)), ("0-3\n", (0, 1, 2, 3)), ("0-1,4,6-7", (0, 1, 4, 6, 7)), ("", ())])
def test_cpulist_round_trip(text, cpus):
    assert hostfacts.parse_cpulist(text) == cpus
    if cpus:
        assert hostfacts.format_cpulist(cpus) == text.strip()


@pytest.mark.parametrize("bad", ["3-1", "a", "0-99999999"])
def test_bad_cpulists_are_refused(bad):
    with pytest.raises(ValueError):
        hostfacts.parse_cpulist(bad)


def test_a_time_namespace_s_offset_is_the_container_s_boot(tmp_path) -> None:
    """With a boottime offset of -S (a time namespace made at the container's create),
    the container booted S seconds after the host, whatever its init's start."""
    from interceptd.emulation.snapshot import start_of, timens_boot

    assert timens_boot("monotonic           0         0\nboottime            0         0\n") \
        is None
    assert timens_boot("monotonic 0 0\nboottime -1000 500000000\n") == 999.5
    assert timens_boot("7 -20 0\n") == 20
    assert timens_boot("boottime 5 0\n") is None and timens_boot(None) is None
    d = tmp_path / "42"
    d.mkdir()
    (d / "stat").write_text("42 (sh) S " + " ".join(["0"] * 18) + " 250000 0\n")
    assert start_of(str(tmp_path), 42, 100) == 2500.0
    (d / "timens_offsets").write_text("monotonic 0 0\nboottime -2499 0\n")
    assert start_of(str(tmp_path), 42, 100) == 2499.0


def test_v1_blkio_accounting_rule_on_whole_disks(tmp_path) -> None:
    from interceptd.emulation import iostat
    from interceptd.emulation.cgpaths import CgroupPaths, Hierarchy

    blk = tmp_path / "block"
    for name, dev in (("vda", "254:0"), ("loop0", "7:0"), ("zram0", "253:0"), ("sdb", "8:16")):
        (blk / name).mkdir(parents=True)
        (blk / name / "dev").write_text(dev + "\n")
    assert iostat.host_disks(str(blk)) == ["8:16", "254:0"]
    cg = tmp_path / "blkio" / "ctr"
    cg.mkdir(parents=True)
    rule = cg / "blkio.throttle.read_bps_device"
    rule.write_text("")
    paths = CgroupPaths(v1={"blkio": Hierarchy(str(tmp_path / "blkio"), str(cg))})
    assert iostat.enable_v1_accounting(paths, ["254:0"]) == []
    assert rule.read_text() == f"254:0 {1 << 40}\n"
    assert iostat.enable_v1_accounting(CgroupPaths(), ["254:0"]) == []  # v2: nothing
    gone = CgroupPaths(v1={"blkio": Hierarchy(str(tmp_path), str(tmp_path / "none"))})
    assert iostat.enable_v1_accounting(gone, ["254:0"])  # an error, reported
