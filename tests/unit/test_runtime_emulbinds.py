"""interceptd-runc's binds of the daemon's emulated files (pure config rewrites)."""

from __future__ import annotations

import os

from interceptd.emulation import registry
from interceptd.emulation.sysfs import EMPTY_DIRS, PRODUCT_UUID
from interceptd.runtime import emulbinds

TREE = "/run/x-rootfs/r1/emul"


def spec(*mounts: dict) -> dict:
    return {"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
                       *mounts],
            "linux": {"maskedPaths": ["/sys/firmware", "/proc/kcore"]}}


def status(files: list[str] | None = None) -> dict:
    return {"emulation": {"fs": "/run/interceptd/fs",
                          "files": list(registry.FILES) if files is None else files}}


def test_no_emulation_no_binds() -> None:
    assert emulbinds.wanted({"emulation": None}) == []
    assert emulbinds.wanted({}) == []
    assert emulbinds.wanted({"emulation": {"fs": "/x"}}) == []


def test_unknown_files_in_status_are_ignored() -> None:
    assert emulbinds.wanted(status(["/proc/meminfo", "/etc/shadow", 7])) == ["/proc/meminfo"]


def test_binds_after_the_config_mounts_read_only() -> None:
    s = spec()
    bound = emulbinds.apply(s, emulbinds.wanted(status()), TREE, exists=lambda p: True)
    dests = [m["destination"] for m in s["mounts"]]
    assert dests[:2] == ["/proc", "/sys"]
    assert "/proc/meminfo" in bound and "/sys/devices/system/cpu/online" in bound
    m = next(m for m in s["mounts"] if m["destination"] == "/proc/meminfo")
    assert m == {"destination": "/proc/meminfo", "type": "bind",
                 "source": f"{TREE}/proc/meminfo", "options": emulbinds.BIND_OPTIONS}
    # product_uuid lands on the real sysfs path, from the tree's symlinked one.
    m = next(m for m in s["mounts"] if m["source"].endswith("product_uuid"))
    assert m["destination"] == registry.bind_target(PRODUCT_UUID) != PRODUCT_UUID
    masked = s["linux"]["maskedPaths"]
    assert all(d in masked for d in EMPTY_DIRS) and masked.count("/sys/firmware") == 1


def test_files_the_host_lacks_are_not_bound() -> None:
    s = spec()
    emulbinds.apply(s, emulbinds.wanted(status()), TREE, exists=lambda p: "dmi" not in p)
    assert not any("dmi" in m["destination"] for m in s["mounts"])


def test_own_mount_kept_and_no_proc_no_binds() -> None:
    lxcfs = {"destination": "/proc/meminfo", "type": "bind",
             "source": "/var/lib/lxcfs/proc/meminfo", "options": ["rbind"]}
    s = spec(lxcfs)
    emulbinds.apply(s, ["/proc/meminfo", "/proc/stat"], TREE, exists=lambda p: True)
    assert [m for m in s["mounts"] if m["destination"] == "/proc/meminfo"] == [lxcfs]
    assert any(m["destination"] == "/proc/stat" for m in s["mounts"])
    bare = {"mounts": [{"destination": "/proc", "type": "proc"}], "linux": {}}
    assert emulbinds.apply(bare, ["/sys/devices/system/cpu/online"], TREE,
                           exists=lambda p: True) == []
    assert bare["linux"]["maskedPaths"] == []


def test_sysctl_values_left_to_the_daemon_and_proc_sys_to_the_kernel() -> None:
    s = spec()
    s["linux"].update({"readonlyPaths": ["/proc/bus", "/proc/sys", "/proc/sysrq-trigger"],
                       "namespaces": [{"type": "pid"}, {"type": "user"}],
                       "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]})
    bound = emulbinds.apply(s, emulbinds.wanted(status()), TREE, exists=lambda p: True)
    # runc refuses config mounts inside /proc but LXCFS's files: the daemon binds them.
    assert "/proc/meminfo" in bound and not any(d.startswith("/proc/sys/") for d in bound)
    assert s["linux"]["readonlyPaths"] == ["/proc/bus", "/proc/sysrq-trigger"]


def test_proc_sys_stays_read_only_when_root_is_the_hosts() -> None:
    for linux in ({"namespaces": [{"type": "pid"}]},  # no user namespace
                  {"namespaces": [{"type": "user"}],
                   "uidMappings": [{"containerID": 0, "hostID": 0, "size": 65536}]},
                  {"namespaces": [{"type": "user", "path": "/proc/1/ns/user"}]}):
        s = spec()
        s["linux"].update({"readonlyPaths": ["/proc/sys"], **linux})
        emulbinds.apply(s, emulbinds.wanted(status()), TREE, exists=lambda p: True)
        assert s["linux"]["readonlyPaths"] == ["/proc/sys"], linux
    s = spec()  # no sysctl value served: nothing to leave to the kernel either
    s["linux"].update({"readonlyPaths": ["/proc/sys"], "namespaces": [{"type": "user"}],
                       "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 1}]})
    emulbinds.apply(s, ["/proc/meminfo"], TREE, exists=lambda p: True)
    assert s["linux"]["readonlyPaths"] == ["/proc/sys"]


def test_sysctl_hook_added_last_with_the_served_values(tmp_path) -> None:
    hook = emulbinds.SYSCTL_HOOK
    s = spec()
    s["hooks"] = {"createRuntime": [{"path": "/usr/bin/theirs"}],
                  "prestart": [{"path": "/proc/1/exe"}]}
    paths = emulbinds.add_sysctl_hook(s, emulbinds.wanted(status()), TREE, 42, "/b/rootfs",
                                      hook=hook)
    assert sorted(paths) == sorted(registry.WRITABLE)
    chain = s["hooks"]["createRuntime"]
    assert chain[0] == {"path": "/usr/bin/theirs"} and len(chain) == 2
    assert chain[1]["path"] == hook and chain[1]["timeout"] == emulbinds.HOOK_TIMEOUT
    assert chain[1]["args"][:4] == [os.path.basename(hook), TREE, "42", "/b/rootfs"]
    assert sorted(chain[1]["args"][4:]) == sorted(registry.WRITABLE)
    assert chain[1]["env"] == ["LC_ALL=C"]
    assert s["hooks"]["prestart"] == [{"path": "/proc/1/exe"}]


def test_no_sysctl_hook_without_procfs_or_a_safe_binary(tmp_path) -> None:
    files = emulbinds.wanted(status())
    s = {"mounts": [{"destination": "/sys", "type": "sysfs", "source": "sysfs"}]}
    assert emulbinds.add_sysctl_hook(s, files, TREE, 42, "/r") == [] and "hooks" not in s
    assert emulbinds.add_sysctl_hook(spec(), ["/proc/meminfo"], TREE, 42, "/r") == []
    assert emulbinds.hook_usable(emulbinds.SYSCTL_HOOK)  # as `make launcher` built it
    # The runtime runs it as the host's root: a binary anyone may rewrite, one in a
    # directory anyone may write (pytest's /tmp), a directory, are refused.
    loose = tmp_path / "loose"
    loose.write_bytes(b"")
    loose.chmod(0o777)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "hook").write_bytes(b"")
    (shared / "hook").chmod(0o755)
    for bad in (loose, shared / "hook", tmp_path):
        assert not emulbinds.hook_usable(str(bad))
        s = spec()
        assert emulbinds.add_sysctl_hook(s, files, TREE, 42, "/r", hook=str(bad)) == []
        assert "hooks" not in s
