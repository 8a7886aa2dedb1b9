"""The bind model (pure): where sources may come from, Docker's own files, the maps."""

from __future__ import annotations

import pytest

from interceptd.runtime import settings
from interceptd.runtime import spec as sp

CID = "c" * 64
DROOT = "/srv/dk"  # a dockerd with its own data root
DOCKER_ROOT = f"{DROOT}/overlay2/{'d' * 64}/merged"


def bind(src: str, dst: str = "/x") -> dict:
    return {"destination": dst, "type": "bind", "source": src, "options": ["rbind"]}


def docker_spec(*extra: str) -> dict:
    mounts = [bind(f"{DROOT}/containers/{CID}/{f}", f"/etc/{f}")
              for f in ("resolv.conf", "hostname", "hosts")]
    mounts += [bind(src) for src in extra]
    return {"root": {"path": DOCKER_ROOT}, "mounts": mounts}


def check(spec: dict, shared=("/home", "/var/lib/docker/volumes"), root=DOCKER_ROOT):
    return sp.check_mounts(spec, [*sp.SENSITIVE_PATHS, "/run/interceptd"], [],
                           resolve=lambda p: p, shared=shared, root=root)


def test_docker_data_root_derived_from_config():
    assert sp.docker_data_root(docker_spec(), DOCKER_ROOT) == DROOT
    # Not Docker's own layout: the rootfs is not under that data root's driver dir.
    assert sp.docker_data_root(docker_spec(), "/elsewhere/rootfs") is None
    assert sp.docker_data_root(docker_spec(), f"{DROOT}/notadriver/x") is None
    s = {"mounts": [bind(f"{DROOT}/containers/short/hosts")]}
    assert sp.docker_data_root(s, DOCKER_ROOT) is None


def test_docker_own_files_and_volumes_of_derived_root_allowed():
    check(docker_spec(f"{DROOT}/volumes/v1/_data", f"{DROOT}/volumes/v1/_data/sub",
                      f"{DROOT}/containers/{'e' * 64}/mounts/shm"))


@pytest.mark.parametrize("src", [
    f"{DROOT}/containers/{CID}/config.v2.json",  # Docker's, but not a per-container file
    f"{DROOT}/volumes/v1",  # above _data: the volume's metadata
    f"{DROOT}/overlay2", "/etc", "/root", "/usr/local/bin", "/etc/cron.d", "/tmp/x",
    "/opt/data",
])
def test_outside_shared_paths_refused(src):
    with pytest.raises(sp.Refused, match=r"shared_paths|sensitive"):
        check(docker_spec(src))


def test_refusal_names_the_setting():
    with pytest.raises(sp.Refused, match=r"outside \[runtime\] shared_paths \(/home"):
        check(docker_spec("/root"))


@pytest.mark.parametrize("src", ["/home/alice", "/home", "/var/lib/docker/volumes/v/_data"])
def test_shared_paths_allowed(src):
    check(docker_spec(src))


def test_shared_path_prefix_is_a_path_prefix():
    with pytest.raises(sp.Refused):
        check(docker_spec("/homeother/x"))


def test_sensitive_inside_shared_path_still_refused():
    with pytest.raises(sp.Refused, match="sensitive"):
        check(docker_spec("/home/alice/docker.sock"))


def test_symlink_resolving_outside_refused():
    s = docker_spec("/home/alice/link")
    with pytest.raises(sp.Refused, match="shared_paths"):
        sp.check_mounts(s, sp.SENSITIVE_PATHS, [], shared=["/home"], root=DOCKER_ROOT,
                        resolve=lambda p: "/opt/x" if p.endswith("link") else p)


def test_relative_source_refused():
    with pytest.raises(sp.Refused, match="absolute"):
        check({"root": {"path": "rootfs"}, "mounts": [bind("data")]})


def test_without_docker_root_its_files_are_not_special():
    s = docker_spec()
    with pytest.raises(sp.Refused):
        check(s, root="/bundle/rootfs")


@pytest.mark.parametrize("root", ["/", "/var", "/run", "/run/interceptd",
                                  "/run/interceptd-rootfs/r1048576/rootfs"])
def test_root_path_refused(root):
    with pytest.raises(sp.Refused):
        sp.check_root(root, [*sp.SENSITIVE_PATHS, "/run/interceptd", "/run/interceptd-rootfs"],
                      ["/run/interceptd", "/run/interceptd-rootfs"])


@pytest.mark.parametrize("root", [DOCKER_ROOT, "/var/lib/docker/overlay2/x/merged",
                                  "/tmp/b/rootfs"])
def test_root_path_allowed(root):
    sp.check_root(root, [*sp.SENSITIVE_PATHS, "/run/interceptd"], ["/run/interceptd"])


def test_bind_maps_never_host_root():
    base, size = 1 << 20, 65536
    # Owned by alice: the container's root is alice there.
    uid_map, gid_map = sp.bind_maps(1000, 1000, base, size)
    assert uid_map == f"1000 {base} 1\n{base + 1} {base + 1} {size - 1}\n"
    assert gid_map == uid_map
    # Root-owned: the container's own range, nothing mapped to host id 0.
    assert sp.bind_maps(0, 0, base, size) == (None, None)
    uid_map, gid_map = sp.bind_maps(1000, 0, base, size)
    assert gid_map is None and uid_map.startswith("1000 ")
    # An owner inside the container's range already is its own.
    assert sp.bind_maps(base + 5, base + 5, base, size) == (None, None)
    for owner in (1000, 5, 65535):
        for line in sp.bind_maps(owner, owner, base, size)[0].splitlines():
            inside, _outside, count = map(int, line.split())
            assert not inside <= 0 < inside + count  # host uid 0 is never reachable


def test_settings_shared_paths(tmp_path):
    st = settings.from_dict({"runtime": {"runtime": "/bin/true"}}, {})
    assert st.shared_paths == ["/var/lib/docker/volumes", "/home"]
    st = settings.from_dict({"runtime": {"runtime": "/bin/true",
                                         "shared_paths": ["/srv/data/"]}}, {})
    assert st.shared_paths == ["/srv/data"]
    for bad in (["relative"], "/home", [1]):
        with pytest.raises(settings.SettingsError, match="shared_paths"):
            settings.from_dict({"runtime": {"runtime": "/bin/true", "shared_paths": bad}}, {})
    with pytest.raises(settings.SettingsError, match="trust_annotations"):
        settings.from_dict({"runtime": {"runtime": "/bin/true",
                                        "sensitive_mount_trust_annotations": "yes"}}, {})
