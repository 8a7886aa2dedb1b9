"""Each emulated file, rendered from recorded snapshots, in the kernel's exact format."""

from __future__ import annotations

import dataclasses
import re

import pytest

from interceptd.emulation import (
    cpu_online,
    cpuinfo,
    diskstats,
    meminfo,
    procsys,
    registry,
    stat,
    swaps,
    sysfs,
    uptime,
)
from interceptd.emulation import sysinfo as si
from tests.unit.emulation_data import DATA, host_of, host_view, load

SCENARIOS = [("v1-cpuset0", None), ("v1-cpuset0", "v1"), ("v1-cpuset0", "v2"),
             ("v1-quota150", None), ("v1-quota50", None), ("v2-swap", None),
             ("v2-nested", None)]


def fields(text: bytes) -> dict[str, int]:
    return {ln.split(":")[0]: int(ln.split()[1]) for ln in text.decode().splitlines()}


# --- the format: an unlimited view reproduces the host's files byte for byte -------------


def test_unlimited_view_is_the_hosts_meminfo_and_cpuinfo():
    host = host_of("v1-cpuset0")
    snap = host_view(host)
    d = DATA / "v1-cpuset0" / "host"
    assert meminfo.render(snap, host, 0.0) == (d / "meminfo").read_bytes()
    assert cpuinfo.render(snap, host, 0.0) == (d / "cpuinfo").read_bytes()
    assert cpu_online.render(snap, host, 0.0) == (d / "online").read_bytes()


def test_meminfo_lines_keep_the_kernels_padding():
    assert meminfo.line("MemTotal", 262144) == "MemTotal:         262144 kB\n"
    assert meminfo.line("HugePages_Total", 0, kb=False) == "HugePages_Total:       0\n"
    assert meminfo.line("VmallocTotal", 34359738367) == "VmallocTotal:   34359738367 kB\n"


# --- meminfo ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "layout"), SCENARIOS)
def test_meminfo_keeps_the_hosts_keys_in_order(name, layout):
    snap, host, now = load(name, layout)
    out = meminfo.render(snap, host, now).decode()
    assert [ln.split(":")[0] for ln in out.splitlines()] == [m.key for m in host.meminfo]
    for ln in out.splitlines():
        assert re.fullmatch(r"[A-Za-z0-9_()]+:\s+\d+( kB)?", ln) and len(ln.split()[0]) <= 16
    f = fields(out.encode())
    assert 0 <= f["MemFree"] <= f["MemAvailable"] <= f["MemTotal"] <= host.mem_kb("MemTotal")
    assert f["SwapFree"] <= f["SwapTotal"]


def test_meminfo_256m_limit_on_the_parent():
    snap, host, now = load("v1-cpuset0")
    f = fields(meminfo.render(snap, host, now))
    assert f["MemTotal"] == 262144
    assert f["MemFree"] == 262144 - (snap.mem_usage >> 10)
    assert f["Cached"] == snap.mem_stats["file"] >> 10
    assert f["AnonPages"] == snap.mem_stats["anon"] >> 10 and f["AnonPages"] >= 48 * 1024
    assert f["Inactive(anon)"] + f["Active(anon)"] >= f["AnonPages"] - 1
    assert f["Buffers"] == 0 and f["Slab"] == 0  # v1 counts neither per cgroup
    assert f["SwapTotal"] == f["SwapFree"] == 0  # the host has no swap


def test_meminfo_v2_with_swap_and_slab():
    snap, host, now = load("v2-swap")
    f = fields(meminfo.render(snap, host, now))
    assert (f["MemTotal"], f["MemFree"]) == (262144, 262144 - 102400)
    # Free plus what the cgroup can reclaim: its file pages and reclaimable slab.
    assert f["MemAvailable"] == 262144 - 102400 + 10240 + 30720 + 3072
    assert (f["SwapTotal"], f["SwapFree"]) == (65536, 49152)
    assert (f["Slab"], f["SReclaimable"], f["SUnreclaim"]) == (5120, 3072, 2048)
    assert (f["Shmem"], f["KernelStack"], f["Dirty"], f["Mapped"]) == (4096, 256, 1024, 8192)
    assert f["Mlocked"] == 0
    assert f["HugePages_Total"] == host.mem_kb("HugePages_Total")  # host-wide: passed


def test_meminfo_without_swap_accounting_shows_none():
    snap, host, now = load("v2-nested")
    f = fields(meminfo.render(snap, host, now))
    assert f["MemTotal"] == 131072 and f["SwapTotal"] == f["SwapFree"] == 0


def test_unlimited_container_is_capped_by_the_hosts_free_memory():
    snap, host, now = load("v1-quota150")
    f = fields(meminfo.render(snap, host, now))
    assert f["MemTotal"] == host.mem_kb("MemTotal")
    assert f["MemFree"] <= host.mem_kb("MemFree")
    assert f["MemAvailable"] <= host.mem_kb("MemAvailable")


# --- cpus -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "count"), [
    ("v1-cpuset0", 1), ("v1-quota150", 2), ("v1-quota50", 1), ("v2-swap", 1),
    ("v2-nested", 1)])
def test_cpu_count_agrees_everywhere(name, count):
    snap, host, now = load(name)
    info = cpuinfo.render(snap, host, now).decode()
    assert re.findall(r"^processor\t: (\d+)$", info, re.M) == [str(i) for i in range(count)]
    assert cpu_online.render(snap, host, now) == (b"0\n" if count == 1 else b"0-1\n")
    lines = stat.render(snap, host, now).decode().splitlines()
    assert [ln.split()[0] for ln in lines[: count + 1]] == ["cpu"] + [
        f"cpu{i}" for i in range(count)]
    assert not lines[count + 1].startswith("cpu")


def test_cpuinfo_renumbers_the_hosts_cpu():
    snap, host, now = load("v2-swap")  # cpuset: host CPU 1 alone
    info = cpuinfo.render(snap, host, now).decode()
    assert info.startswith("processor\t: 0\n") and info.endswith("\n\n")
    assert "core id\t\t: 1\n" in info and info.count("processor") == 1


# --- stat, uptime, sysinfo agree --------------------------------------------------------


def test_stat_v2_times_btime_and_tasks():
    snap, host, now = load("v2-swap")
    lines = stat.render(snap, host, now).decode().splitlines()
    # uptime 3000 s = 300000 ticks on one CPU: user 800, nice 100, system 350, idle rest.
    assert lines[0] == "cpu  800 100 350 298750 0 0 0 0 0 0"
    assert lines[1] == "cpu0 800 100 350 298750 0 0 0 0 0 0"
    rest = dict(ln.split(" ", 1) for ln in lines[2:])
    assert rest["btime"] == str(host.btime + 2000)
    assert (rest["processes"], rest["procs_running"], rest["procs_blocked"]) == ("8", "1", "1")
    host_stat = (DATA / "v2-swap" / "host" / "stat").read_text().splitlines()
    assert "intr " + rest["intr"] in host_stat and "ctxt " + rest["ctxt"] in host_stat


@pytest.mark.parametrize(("name", "layout"), SCENARIOS)
def test_stat_sums_and_uptime_agree(name, layout):
    snap, host, now = load(name, layout)
    lines = stat.render(snap, host, now).decode().splitlines()
    cpus = [[int(v) for v in ln.split()[1:]] for ln in lines if ln.startswith("cpu")]
    total, per = cpus[0], cpus[1:]
    assert total == [sum(col) for col in zip(*per, strict=True)]
    up, idle = (float(v) for v in uptime.render(snap, host, now).split())
    assert idle == pytest.approx(total[3] / host.clk_tck, abs=0.01)
    used = total[0] + total[1] + total[2]
    if used <= len(per) * up * host.clk_tck:  # else idle is clamped at 0
        for c in per:
            assert sum(c) == pytest.approx(up * host.clk_tck, abs=len(per) + 1)
    hi = si.Sysinfo(int(host.uptime), (0, 0, 0), host.mem_kb("MemTotal") << 10,
                     host.mem_kb("MemFree") << 10, host.mem_kb("Shmem") << 10,
                     host.mem_kb("Buffers") << 10, host.mem_kb("SwapTotal") << 10,
                     host.mem_kb("SwapFree") << 10, 100)
    s = si.render_snapshot(snap, hi, now)
    assert 0 <= s.uptime - up < 1.01  # sysinfo rounds up (do_sysinfo), /proc/uptime shows 1/100 s
    f = fields(meminfo.render(snap, host, now))
    assert (s.totalram >> 10, s.freeram >> 10) == (f["MemTotal"], f["MemFree"])
    assert (s.totalswap >> 10, s.freeswap >> 10) == (f["SwapTotal"], f["SwapFree"])
    assert s.procs == (snap.pids_current if snap.pids_current is not None
                       else snap.tasks.threads)


def test_uptime_since_the_containers_start():
    snap, host, now = load("v2-swap")
    assert uptime.render(snap, host, now) == b"3000.00 2987.50\n"
    assert uptime.render(snap, host, 2000.999) == b"0.99 0.00\n"
    assert uptime.render(snap, host, 1000.0) == b"0.00 0.00\n"  # clock before start


def test_recorded_uptime_is_the_workloads_age():
    snap, host, now = load("v1-cpuset0")
    up = float(uptime.render(snap, host, now).split()[0])
    assert 5.0 <= up <= 8.0  # the recorder waits 6 s after starting it


# --- swaps, diskstats -------------------------------------------------------------------


def test_swaps():
    snap, host, now = load("v2-swap")
    assert swaps.render(snap, host, now) == (
        b"Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        b"none" + b" " * 36 + b"partition\t65536\t\t16384\t\t-2\n")
    snap, host, now = load("v1-cpuset0")
    assert swaps.render(snap, host, now) == swaps.HEADER.encode()
    assert swaps.swap_line("x" * 50, 20000000, 0, -3).startswith("x" * 50 + " partition\t")


def test_diskstats_only_the_disks_it_used():
    snap, host, now = load("v1-cpuset0")
    out = diskstats.render(snap, host, now).decode().splitlines()
    assert len(out) == 1
    parts = out[0].split()
    assert out[0].startswith(" 254       0 vda ") and len(parts) == 20
    s = snap.io[(254, 0)]
    assert [int(v) for v in parts[3:10]] == [s.rios, 0, s.rbytes // 512, 0, s.wios, 0,
                                              s.wbytes // 512]
    host_line = next(ln for ln in (DATA / "v1-cpuset0/host/diskstats").read_text()
                     .splitlines() if " vda " in ln)
    assert host_line.index("vda") == out[0].index("vda")
    snap, host, now = load("v2-swap")
    assert diskstats.render(snap, host, now) == (
        b" 254       0 vda 16 0 2048 0 64 0 16384 0 0 0 0 0 0 0 0 0 0\n")


# --- sysfs and the registry -------------------------------------------------------------


def test_product_uuid_is_stable_per_container():
    a = sysfs.product_uuid("ctr-a")
    assert a == sysfs.product_uuid("ctr-a") != sysfs.product_uuid("ctr-b")
    assert re.fullmatch(rb"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\n",
                        a)
    with pytest.raises(ValueError):
        sysfs.product_uuid("")


@pytest.mark.parametrize(("name", "layout"), SCENARIOS)
def test_every_registered_file_renders(name, layout):
    snap, host, now = load(name, layout)
    inp = registry.RenderInput(snap, host, now, container_id="c1", sysctl_host="4\t4\t1\t7\n")
    for path in registry.FILES:
        out = registry.render(path, inp)
        assert isinstance(out, bytes) and (out.endswith(b"\n") or out == b"")


def test_sysctl_files_show_the_containers_value_else_the_hosts():
    snap, host, now = load("v1-cpuset0")
    path = "/proc/sys/kernel/panic"
    assert set(registry.SYSCTL_FILES) == registry.WRITABLE and path in registry.WRITABLE
    inp = registry.RenderInput(snap, host, now, sysctl_host="0\n")
    assert registry.render(path, inp) == b"0\n"
    inp = registry.RenderInput(snap, host, now, sysctl_state={"kernel/panic": "7"},
                               sysctl_host="0\n")
    assert registry.render(path, inp) == b"7\n"
    with pytest.raises(LookupError):  # not on this host: the reader's EIO
        registry.render(path, registry.RenderInput(snap, host, now))
    assert registry.file_at("/proc/sys/fs/file-max") == "/proc/sys/fs/file-max"
    with pytest.raises(KeyError):
        registry.render("/proc/version", inp)


def test_registry_lists_every_emulated_path():
    paths = set(registry.emulated_paths())
    assert {"/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/uptime", "/proc/loadavg",
            "/proc/swaps", "/proc/diskstats", "/sys/devices/system/cpu/online",
            "/sys/devices/system/cpu/possible", "/sys/devices/system/cpu/present",
            "/sys/class/dmi/id/product_uuid", "/sys/kernel/debug", "/sys/kernel/tracing",
            "/sys/kernel/security", "/sys/kernel/config", "/sys/firmware",
            *(f"/proc/sys/{n}" for n in procsys.SERVED)} == paths


def test_stat_counters_only_grow_while_the_cpu_count_holds():
    snap, host, _ = load("v1-quota150")  # two CPUs shown
    assert snap.start is not None
    prev: list[list[int]] | None = None
    for step in range(50):
        # Time goes on; the cgroup uses up to its 1.5 CPUs' worth of it.
        now = snap.start + 100 + step * 0.37
        s = dataclasses.replace(snap, cpu_user_us=snap.cpu_user_us + step * 370_000,
                                cpu_system_us=snap.cpu_system_us + step * 185_000)
        rows = [[int(v) for v in ln.split()[1:]]
                for ln in stat.render(s, host, now).decode().splitlines()
                if ln.startswith("cpu")]
        if prev is not None:
            for row, before in zip(rows, prev, strict=True):
                assert all(a >= b for a, b in zip(row, before, strict=True)), (row, before)
        prev = rows
    assert prev is not None and len(prev) == 3
