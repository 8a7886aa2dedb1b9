"""Per-container policy state: snapshotted once, kept across a daemon restart, dropped
when the container is gone."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from interceptd.config import Config
from interceptd.handlers import scope
from interceptd.kernel.mounttable import MountTable
from interceptd.policystore import PolicyStore


class FakeContainer:
    def __init__(self, cid: str, init_pid: int):
        self.id = cid
        self.init_pid = init_pid
        self.bundle = ""
        self.cookie = 0
        self.pidfd = -1
        self.notify_fds: list[int] = []
        self.channel = None
        self.policy: PolicyStore | None = None


def test_state_saved_reloaded_and_kept_while_the_init_lives(tmp_path: Path):
    cfg = Config()
    cfg.daemon.state_dir = str(tmp_path)
    scope.configure(cfg)
    try:
        c = FakeContainer("ct-1", os.getpid())
        st = scope.state_of(c)
        path = tmp_path / "policy" / "ct-1.json"
        saved = json.loads(path.read_text())
        assert saved["init_pid"] == os.getpid()
        assert saved["immutable"] == st.imm.to_dict()
        # A "restarted daemon" (new container object) reloads the saved snapshot.
        saved["masked"] = ["/proc/marker"]
        path.write_text(json.dumps(saved))
        del c
        gc.collect()
        assert path.exists()  # the init (this process) is alive: kept
        again = scope.state_of(FakeContainer("ct-1", os.getpid()))
        assert again.masked == ("/proc/marker",)
    finally:
        scope.configure(None)


def test_state_of_a_reused_id_is_not_reloaded(tmp_path: Path):
    cfg = Config()
    cfg.daemon.state_dir = str(tmp_path)
    scope.configure(cfg)
    try:
        (tmp_path / "policy").mkdir()
        (tmp_path / "policy" / "ct-2.json").write_text(json.dumps(
            {"init_pid": os.getpid(), "init_start": -1, "immutable": {}, "masked": ["/x"],
             "readonly": []}))
        st = scope.state_of(FakeContainer("ct-2", os.getpid()))
        assert "/x" not in st.masked
    finally:
        scope.configure(None)


def test_state_dropped_with_the_container(tmp_path: Path):
    import subprocess

    cfg = Config()
    cfg.daemon.state_dir = str(tmp_path)
    scope.configure(cfg)
    p = subprocess.Popen(["sleep", "30"])
    try:
        c = FakeContainer("ct-3", p.pid)
        scope.state_of(c)
        path = tmp_path / "policy" / "ct-3.json"
        assert path.exists()
        p.kill()
        p.wait()
        del c
        gc.collect()
        assert not path.exists()
    finally:
        if p.poll() is None:
            p.kill()
        scope.configure(None)


MOUNTINFO = """\
20 1 254:0 / / rw - ext4 /dev/vda rw
21 20 0:5 / /proc rw - proc proc rw
22 21 0:95 /proc/meminfo /proc/meminfo ro - fuse.interceptd interceptd ro
23 20 0:6 / /sys ro - sysfs sysfs ro
24 23 0:95 /x /sys/devices/system/cpu/online ro - fuse.interceptd interceptd ro
25 23 0:95 /x /sys/devices/virtual/dmi/id/product_uuid ro - fuse.interceptd interceptd ro
26 21 0:96 / /proc/cpuinfo ro - fuse.other other ro
27 20 0:95 /proc/stat /mnt/stat ro - fuse.interceptd interceptd ro
"""


def test_emulated_binds_come_from_the_attach_table_and_are_saved(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Our FUSE type on an emulated path only (another FUSE there, or ours elsewhere, is
    not an emulated file); each maps to the daemon's own file, and survives a restart."""
    cfg = Config()
    cfg.daemon.state_dir = str(tmp_path)
    scope.configure(cfg)
    monkeypatch.setattr(MountTable, "read",
                        classmethod(lambda cls, pid: cls.parse(MOUNTINFO)))
    try:
        fs = str(tmp_path / "fs")
        want = {"/proc/meminfo": f"{fs}/proc/meminfo",
                "/sys/devices/system/cpu/online": f"{fs}/sys/devices/system/cpu/online",
                "/sys/devices/virtual/dmi/id/product_uuid":
                    f"{fs}/sys/class/dmi/id/product_uuid"}
        c = FakeContainer("ct-emu", os.getpid())
        st = scope.state_of(c)
        assert st.emulated == want
        kinds = {m.mountpoint: m.kind for m in st.imm.mounts}
        assert kinds["/proc/meminfo"] == "emulated" and kinds["/proc/cpuinfo"] != "emulated"
        del c, st
        gc.collect()
        again = scope.state_of(FakeContainer("ct-emu", os.getpid()))
        assert again.emulated == want
    finally:
        scope.configure(None)


def test_the_load_entry_point_reads_what_the_store_saved(tmp_path: Path) -> None:
    """policystore.load/state_path: what a restarted daemon (or a tool) reads back, without
    a container record."""
    from interceptd import policystore
    from interceptd.kernel.procinfo import start_ticks

    store = PolicyStore(str(tmp_path / "policy"))
    c = FakeContainer("ct/odd name", os.getpid())
    st = store.state(c)
    path = policystore.state_path(str(tmp_path / "policy"), c.id)
    assert path == str(tmp_path / "policy" / "ct_odd_name.json")
    got = policystore.load(path, os.getpid(), start_ticks(os.getpid()))
    assert got is not None and got.to_dict() == st.to_dict()
    assert policystore.load(path, os.getpid(), start_ticks(os.getpid()) + 1) is None
    store.close()
    assert os.path.exists(path)  # the init (this process) lives on: kept for a restart
