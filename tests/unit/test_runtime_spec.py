"""The pure config.json rewrites of interceptd-runc (no kernel)."""

import errno

import pytest

from interceptd.runtime import spec as sp
from interceptd.runtime.caps import CAP_NAMES, names_in_mask
from interceptd.runtime.seccomp import Action, decide


def base_spec() -> dict:
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "capabilities": {
            k: ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"]
            for k in ("bounding", "effective", "permitted")}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts",
                                                          "mount")]},
    }


# -------------------------------------------------------------- user namespace

def test_userns_added_when_absent():
    s = base_spec()
    sp.ensure_user_namespace(s, 1 << 20)
    assert {"type": "user"} in s["linux"]["namespaces"]
    assert s["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1 << 20, "size": 65536}]
    assert s["linux"]["gidMappings"] == s["linux"]["uidMappings"]


def test_userns_replaces_host_userns_path_and_maps():
    s = base_spec()
    s["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    s["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 0, "size": 4294967295}]
    sp.ensure_user_namespace(s, 2 << 20)
    users = [n for n in s["linux"]["namespaces"] if n["type"] == "user"]
    assert users == [{"type": "user"}]
    assert s["linux"]["uidMappings"][0]["hostID"] == 2 << 20


# -------------------------------------------------------------- namespaces

def test_missing_pid_namespace_refused():
    s = base_spec()
    s["linux"]["namespaces"] = [n for n in s["linux"]["namespaces"] if n["type"] != "pid"]
    with pytest.raises(sp.Refused, match="--pid=host"):
        sp.check_namespaces(s, {})


def test_missing_network_namespace_refused():
    s = base_spec()
    s["linux"]["namespaces"] = [n for n in s["linux"]["namespaces"] if n["type"] != "network"]
    with pytest.raises(sp.Refused, match="network"):
        sp.check_namespaces(s, {})


def test_host_namespace_path_refused_other_path_allowed():
    s = base_spec()
    s["linux"]["namespaces"][1] = {"type": "network", "path": "/proc/1/ns/net"}
    ident = {"/proc/1/ns/net": (4, 1), "/run/netns/other": (4, 2)}
    with pytest.raises(sp.Refused, match="host"):
        sp.check_namespaces(s, {"network": {(4, 1)}}, ident.__getitem__)
    s["linux"]["namespaces"][1]["path"] = "/run/netns/other"
    sp.check_namespaces(s, {"network": {(4, 1)}}, ident.__getitem__)


def test_cgroup_namespace_added():
    s = base_spec()
    sp.check_namespaces(s, {})
    assert {"type": "cgroup"} in s["linux"]["namespaces"]


# -------------------------------------------------------------- capabilities

def test_caps_clamped_to_bounding_set():
    s = base_spec()
    dropped = sp.clamp_capabilities(s["process"], {"CAP_CHOWN", "CAP_SYS_ADMIN"})
    assert dropped == ["CAP_SYS_RESOURCE"]
    for k in ("bounding", "effective", "permitted"):
        assert s["process"]["capabilities"][k] == ["CAP_CHOWN", "CAP_SYS_ADMIN"]


def test_caps_unknown_dropped_and_mask_parse():
    p = {"capabilities": {"bounding": ["CAP_NOT_A_CAP", "CAP_KILL"]}}
    assert sp.clamp_capabilities(p, set(CAP_NAMES)) == ["CAP_NOT_A_CAP"]
    assert names_in_mask(0x1FFFEFFFFFF) == set(CAP_NAMES) - {"CAP_SYS_RESOURCE"}
    assert sp.clamp_cap_list(["sys_admin", "CAP_SYS_RESOURCE"], {"CAP_SYS_ADMIN"}) == [
        "sys_admin"]


# -------------------------------------------------------------- masks

def test_masks_added_for_privileged_and_kept():
    s = base_spec()
    s["linux"]["maskedPaths"] = ["/proc/custom"]
    sp.apply_masks(s)
    assert s["linux"]["maskedPaths"][0] == "/proc/custom"
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert "/proc/sysrq-trigger" in s["linux"]["readonlyPaths"]
    once = dict(s["linux"])
    sp.apply_masks(s)
    assert s["linux"] == once


# -------------------------------------------------------------- sensitive mounts

def bind(src: str, dst: str = "/x") -> dict:
    return {"destination": dst, "type": "bind", "source": src, "options": ["rbind", "rw"]}


@pytest.mark.parametrize("src", [
    "/var/run/docker.sock", "/run/containerd/containerd.sock", "/etc/docker",
    "/var/lib/docker", "/var/lib/docker/overlay2", "/", "/var", "/srv/x/docker.sock",
    "/run/interceptd",
])
def test_sensitive_bind_refused(src):
    s = base_spec()
    s["mounts"].append(bind(src))
    with pytest.raises(sp.Refused, match="sensitive"):
        sp.check_mounts(s, [*sp.SENSITIVE_PATHS, "/run/interceptd"], [], resolve=lambda p: p)


def test_symlink_to_sensitive_refused():
    s = base_spec()
    s["mounts"].append(bind("/home/me/innocent"))
    with pytest.raises(sp.Refused):
        sp.check_mounts(s, sp.SENSITIVE_PATHS, [], resolve=lambda p: "/run/docker.sock")


@pytest.mark.parametrize("src", [
    "/home/me/data", "/var/lib/docker/volumes/myvol/_data",
    "/var/lib/docker/containers/" + "a" * 64 + "/resolv.conf",
])
def test_ordinary_binds_allowed(src):
    s = base_spec()
    s["mounts"].append(bind(src))
    sp.check_mounts(s, sp.SENSITIVE_PATHS, [], resolve=lambda p: p,
                    shared=["/home", "/var/lib/docker/volumes"],
                    root="/var/lib/docker/overlay2/" + "b" * 64 + "/merged")


def test_allow_list_by_image_annotation():
    s = base_spec()
    s["mounts"].append(bind("/var/run/docker.sock"))
    s["annotations"] = {"org.opencontainers.image.ref.name": "portainer/agent"}
    # Annotations are whoever-creates-the-container's to set: only an admin who
    # trusts them (sensitive_mount_trust_annotations) gets the allow-list.
    with pytest.raises(sp.Refused, match="sensitive"):
        sp.check_mounts(s, sp.SENSITIVE_PATHS, ["portainer/agent"], resolve=lambda p: p)
    sp.check_mounts(s, sp.SENSITIVE_PATHS, ["portainer/agent"], resolve=lambda p: p,
                    trust_annotations=True)
    with pytest.raises(sp.Refused):
        sp.check_mounts(s, sp.SENSITIVE_PATHS, ["other/image"], resolve=lambda p: p,
                        trust_annotations=True)


def test_non_bind_mounts_ignored():
    s = base_spec()
    s["mounts"].append({"destination": "/run", "type": "tmpfs", "source": "/run/docker"})
    sp.check_mounts(s, sp.SENSITIVE_PATHS, [], resolve=lambda p: p)


# -------------------------------------------------------------- seccomp

DENY = [{"names": ["kexec_load", "init_module"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]


def rules_for(sc: dict, name: str) -> list[dict]:
    return [r for r in sc["syscalls"] if name in r["names"]]


def test_seccomp_added_when_absent():
    """No profile: the daemon's default profile (default deny, ENOSYS), not allow-all."""
    s = base_spec()
    sp.add_seccomp(s, ["mount", "sysfs"], DENY, "/run/interceptd/seccomp.sock", "cid")
    sc = s["linux"]["seccomp"]
    assert sc["defaultAction"] == "SCMP_ACT_ERRNO" and sc["defaultErrnoRet"] == errno.ENOSYS
    assert sc["listenerPath"] == "/run/interceptd/seccomp.sock"
    assert sc["listenerMetadata"] == "cid"
    assert rules_for(sc, "mount") == [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
    assert decide(sc, "kexec_load", [0] * 6) == Action("SCMP_ACT_ERRNO", 1)
    # sysfs is not in the default allow list: it stays refused, never notified.
    assert decide(sc, "sysfs", [0] * 6) == Action("SCMP_ACT_ERRNO", errno.ENOSYS)
    assert decide(sc, "getpid", [0] * 6) == Action("SCMP_ACT_ALLOW")
    assert "SCMP_ARCH_X86_64" in sc["architectures"]


def test_seccomp_keeps_own_rules_and_never_weakens():
    s = base_spec()
    s["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read", "write", "sysfs"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["umount2"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["kexec_load"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
        ],
    }
    sp.add_seccomp(s, ["sysfs", "umount2", "mount"], DENY, "/l", "m")
    sc = s["linux"]["seccomp"]
    assert sc["defaultAction"] == "SCMP_ACT_ERRNO"
    # allowed before -> vetted now; refused before -> still refused; mount fell to
    # the ERRNO default before -> stays refused (not notified).
    assert [r["action"] for r in rules_for(sc, "sysfs")] == ["SCMP_ACT_NOTIFY"]
    assert decide(sc, "umount2", [0] * 6).denies
    assert rules_for(sc, "mount") == []
    # the deny list wins over the container's allow (its EPERM is the default here)
    assert decide(sc, "kexec_load", [0] * 6).denies
    assert rules_for(sc, "read")[0]["action"] == "SCMP_ACT_ALLOW"
    assert rules_for(sc, "personality")[0]["args"]
    assert sc["architectures"] == ["SCMP_ARCH_X86_64"]


def test_seccomp_input_not_mutated():
    own = {"defaultAction": "SCMP_ACT_ALLOW",
           "syscalls": [{"names": ["sysfs", "getpid"], "action": "SCMP_ACT_ALLOW"}]}
    s = base_spec()
    s["linux"]["seccomp"] = own
    sp.add_seccomp(s, ["sysfs"], [], "/l", "m")
    assert own["syscalls"][0]["names"] == ["sysfs", "getpid"]


# -------------------------------------------------------------- cgroup, rootfs, binds

def test_cgroups_path():
    s = base_spec()
    assert sp.ensure_cgroups_path(s, "c1", systemd=False)
    assert s["linux"]["cgroupsPath"] == "/interceptd/c1"
    s["linux"]["cgroupsPath"] = "/docker/abc"
    assert not sp.ensure_cgroups_path(s, "c1", systemd=False)
    assert s["linux"]["cgroupsPath"] == "/docker/abc"


def test_root_path_and_binds():
    s = base_spec()
    assert sp.root_path(s, "/b") == "/b/rootfs"
    s["root"]["path"] = "/abs/merged"
    assert sp.root_path(s, "/b") == "/abs/merged"
    s["mounts"] += [bind("/data", "/data"), bind("/dev/null", "/dev/x"),
                    {"destination": "/shm", "type": "tmpfs", "source": "shm"}]
    assert sp.bind_indexes(s) == [1, 2]  # every bind is checked and re-sourced
    with pytest.raises(sp.Refused):
        sp.root_path({}, "/b")


def test_ping_group_range_fitted_to_mapping():
    s = base_spec()
    s["linux"]["sysctl"] = {"net.ipv4.ping_group_range": "0 2147483647", "kernel.x": "1"}
    sp.fit_sysctls(s)
    assert s["linux"]["sysctl"] == {"net.ipv4.ping_group_range": "0 65535", "kernel.x": "1"}
    s["linux"]["sysctl"]["net.ipv4.ping_group_range"] = "bogus"
    sp.fit_sysctls(s)
    assert s["linux"]["sysctl"]["net.ipv4.ping_group_range"] == "bogus"


# ------------------------------------------------------------------ non-bind mounts

def _with_mount(m: dict) -> dict:
    return {"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, m]}


@pytest.mark.parametrize("m", [
    {"destination": "/x", "type": "overlay", "source": "overlay",
     "options": ["lowerdir=/etc", "upperdir=/tmp/u", "workdir=/tmp/w"]},
    {"destination": "/x", "type": "ext4", "source": "/dev/sda1"},
    {"destination": "/x", "type": "none", "source": "/etc"},
    {"destination": "/x", "type": "fuse", "source": "/dev/fuse", "options": ["fd=3"]},
    {"destination": "/x", "type": "devtmpfs", "source": "devtmpfs"},
    {"destination": "/x", "type": "tmpfs", "source": "tmpfs", "options": ["x=/etc"]},
])
def test_non_bind_mount_naming_host_paths_refused(m):
    with pytest.raises(sp.Refused, match="refused by interceptd"):
        sp.check_other_mounts(_with_mount(m))
    with pytest.raises(sp.Refused):
        sp.check_mounts(_with_mount(m), [], [])


@pytest.mark.parametrize("m", [
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
    {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]},
    {"destination": "/data", "source": "/srv/data", "options": ["bind"]},
])
def test_pathless_and_bind_mounts_pass_the_type_check(m):
    sp.check_other_mounts(_with_mount(m))
