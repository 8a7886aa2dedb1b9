"""cgdelegate: which configs get delegated cgroups, which paths, which hierarchies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from interceptd.runtime import cgdelegate

MOUNTINFO = [
    "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755",
    "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw",
    "32 30 0:28 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset",
    "33 30 0:29 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids",
    "34 30 0:29 /sub /mnt/pids-again rw - cgroup cgroup rw,pids",  # not its root
    "35 30 0:29 / /mnt/pids-twice rw - cgroup cgroup rw,pids",  # the same hierarchy
]


def spec(options: list[str], path: str | None = "/docker/abc") -> dict:
    s: dict = {"mounts": [{"destination": "/sys/fs/cgroup", "type": "cgroup",
                           "source": "cgroup", "options": options}], "linux": {}}
    if path is not None:
        s["linux"]["cgroupsPath"] = path
    return s


def test_only_read_write_cgroup_mounts_delegate():
    assert cgdelegate.wants_delegation(spec(["nosuid", "rw"]))
    assert not cgdelegate.wants_delegation(spec(["nosuid", "ro"]))
    assert not cgdelegate.wants_delegation({"mounts": [{"type": "tmpfs"}]})


@pytest.mark.parametrize(("path", "rel"), [
    ("/docker/abc", "docker/abc"), ("//a//b/", "a/b"), ("/interceptd/x", "interceptd/x"),
    ("system.slice:docker:abc", None), ("docker/abc", None), ("/a/../../etc", None),
    ("/", None), ("", None), (None, None), ("/a/./b", None),
])
def test_relative_path(path, rel):
    assert cgdelegate.relative_path(path) == rel


def test_hierarchies_one_per_superblock_at_its_root():
    assert cgdelegate.hierarchies(MOUNTINFO) == [
        ("/sys/fs/cgroup/unified", True, False), ("/sys/fs/cgroup/cpuset", False, True),
        ("/sys/fs/cgroup/pids", False, False)]


def test_prepare_creates_and_hands_over_only_new_directories(tmp_path: Path):
    v1, v2 = tmp_path / "pids", tmp_path / "unified"
    v1.mkdir()
    v2.mkdir()
    (v1 / "docker" / "taken").mkdir(parents=True)
    lines = [f"1 0 0:1 / {v2} rw - cgroup2 cgroup2 rw",
             f"2 0 0:2 / {v1} rw - cgroup cgroup rw,pids"]
    uid = os.getuid()
    created = cgdelegate.prepare(spec(["rw"], "/docker/taken"), uid, uid, lines)
    assert created == [str(v2 / "docker" / "taken")]  # v1's existed: not taken over
    created2 = cgdelegate.prepare(spec(["rw"], "/docker/new"), uid, uid, lines)
    assert created2 == [str(v2 / "docker" / "new"), str(v1 / "docker" / "new")]
    assert cgdelegate.prepare(spec(["ro"], "/docker/x"), uid, uid, lines) == []
    cgdelegate.undo(created + created2)
    assert not (v2 / "docker" / "new").exists() and (v1 / "docker" / "taken").exists()
