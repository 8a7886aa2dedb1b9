"""interceptd-runc's id pool, records, settings (no containers)."""

import os
import subprocess
import sys

import pytest

from interceptd.runtime import idpool, records, settings, shift


def test_pool_unique_and_released(tmp_path):
    p = idpool.IdPool(str(tmp_path), 1 << 20, 4)
    a, b = p.allocate("a"), p.allocate("b")
    assert a != b and {a, b} <= {(1 << 20) + i * 65536 for i in range(4)}
    assert p.allocate("a") == a
    assert p.release("a") and not p.release("a")
    assert p.allocate("c") == a
    p.allocate("d")
    p.allocate("e")
    with pytest.raises(idpool.PoolExhausted):
        p.allocate("f")


_GRAB = """
import sys
from interceptd.runtime import idpool
d, prefix = sys.argv[1], sys.argv[2]
pool = idpool.IdPool(d, 1 << 20, 256)
print(" ".join(str(pool.allocate(f"{prefix}{i}")) for i in range(8)))
"""


def test_pool_concurrent_allocations_never_collide(tmp_path):
    # Separate interpreters, not a fork of this (threaded) pytest process: a
    # forked worker can inherit a held lock and hang the suite.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _GRAB, str(tmp_path), f"p{k}-"],
            stdout=subprocess.PIPE, text=True,
        )
        for k in range(8)
    ]
    bases = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        bases += [int(b) for b in out.split()]
    assert len(bases) == 64
    assert len(set(bases)) == 64
    assert len(idpool.IdPool(str(tmp_path), 1 << 20, 256).allocated()) == 64


def test_records_roundtrip(tmp_path):
    store = records.RecordStore(str(tmp_path))
    k = records.container_key("/run/docker/runtime-runc/moby", "abc")
    assert k != records.container_key(None, "abc")
    r = records.Record(key=k, container_id="abc", host_base=5, mounts=["/m"])
    store.save(r)
    assert store.load(k) == r
    store.remove(k)
    assert store.load(k) is None
    assert "/" not in records.container_key(None, "../../etc")


def test_settings_env_and_file(tmp_path):
    cfg = tmp_path / "i.toml"
    cfg.write_text('[runtime]\nruntime = "crun"\nstate_dir = "/s"\nid_pool_start = 2000000\n'
                   'sensitive_mount_allow = ["img"]\n')
    st = settings.load({"INTERCEPTD_CONFIG": str(cfg)})
    assert st.runtime.endswith("/crun") and st.state_dir == "/s"
    assert st.id_pool_start == 2000000 and st.sensitive_mount_allow == ["img"]
    st = settings.load({"INTERCEPTD_CONFIG": str(cfg), "INTERCEPTD_RUNTIME": "runc",
                        "INTERCEPTD_STATE_DIR": "/t"})
    assert st.runtime.endswith("/runc") and st.state_dir == "/t"
    with pytest.raises(settings.SettingsError):
        settings.load({"INTERCEPTD_CONFIG": str(tmp_path / "missing.toml")})
    cfg.write_text("[runtime]\nid_pool_start = -1\n")
    with pytest.raises(settings.SettingsError):
        settings.load({"INTERCEPTD_CONFIG": str(cfg)})
    cfg.write_text("not toml [")
    with pytest.raises(settings.SettingsError):
        settings.load({"INTERCEPTD_CONFIG": str(cfg)})


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_shift_tree_roundtrip_keeps_setuid_until_root_owned(tmp_path):
    top = tmp_path / "upper"
    (top / "d").mkdir(parents=True)
    f = top / "d" / "f"
    f.write_text("x")
    os.chown(f, 0, 5)
    os.chmod(f, 0o4755)
    os.symlink("f", top / "d" / "l")
    shift.shift_tree(str(top), 1 << 20, 0, 65536)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1 << 20, (1 << 20) + 5)
    assert st.st_mode & 0o7777 == 0o4755
    assert os.lstat(top / "d" / "l").st_uid == 1 << 20
    shift.shift_tree(str(top), -(1 << 20), 1 << 20, (1 << 20) + 65536)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (0, 5)
    assert os.stat(top).st_uid == 0
    # Host root's now: never setuid (the container's root may have set it).
    assert os.stat(f).st_mode & 0o7777 == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_shift_tree_skips_devices_mounts_and_symlinked_top(tmp_path):
    top = tmp_path / "upper"
    top.mkdir()
    os.mknod(top / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(top / "fifo", 0o600 | 0o010000)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    shift.shift_tree(str(top), 1 << 20, 0, 65536)
    assert os.lstat(top / "null").st_uid == 0  # a device node is never the layer's
    assert os.lstat(top / "fifo").st_uid == 1 << 20
    with pytest.raises(OSError):
        shift.shift_tree(str(tmp_path / "link"), 1 << 20, 0, 65536)
    assert os.stat(tmp_path / "real").st_uid == 0


def test_delete_releases_a_range_without_record(tmp_path, monkeypatch):
    """A create killed after taking its range but before its record: delete frees it."""
    from interceptd.runtime import argv
    from interceptd.runtime.jobs.delete import Delete

    st = settings.from_dict({"runtime": {"state_dir": str(tmp_path), "runtime": "/bin/true"}},
                            {})
    inv = argv.parse(["--root", "/r", "delete", "gone"])
    key = records.container_key("/r", "gone")
    pool = idpool.IdPool(st.runtime_dir, st.id_pool_start, st.id_pool_ranges)
    pool.allocate(key)
    assert Delete(inv, st).finish(0) == 0
    assert pool.allocated() == {}


def test_pool_rewritten_in_place_shrinks(tmp_path):
    """The pool file is updated in place: a shorter table leaves no stale tail."""
    import json

    pool = idpool.IdPool(str(tmp_path), 1 << 20, 64)
    keys = [f"container-with-a-long-name-{i}" for i in range(20)]
    for k in keys:
        pool.allocate(k)
    ino = os.stat(pool.path).st_ino
    for k in keys[1:]:
        assert pool.release(k)
    with open(pool.path) as f:
        data = json.load(f)
    assert data["allocated"] == {keys[0]: 1 << 20}
    assert os.stat(pool.path).st_ino == ino
    assert idpool.IdPool(str(tmp_path), 1 << 20, 64).allocated() == {keys[0]: 1 << 20}


def test_record_first_save_in_place_then_replaced(tmp_path):
    store = records.RecordStore(str(tmp_path / "containers"))
    rec = records.Record(key="k", container_id="c", mount_dir="/m")
    store.save(rec)  # creates the directory and the record
    rec.warnings.append("volume x not id-mapped")
    store.save(rec)
    assert store.load("k") == rec
    assert sorted(os.listdir(tmp_path / "containers")) == ["k.json"]


def test_teardown_keeps_range_dirs_but_not_per_container_ones(tmp_path):
    """A range's mount dir stays for its next holder; an older per-container one goes."""
    from interceptd.runtime import host

    for keep in (True, False):
        md = tmp_path / f"m{keep}"
        for sub in ("rootfs", "lower/0", "vol/0"):
            (md / sub).mkdir(parents=True)
        (md / "vol" / "1").write_text("")
        rec = records.Record(key="k", container_id="c", mount_dir=str(md), keep_dirs=keep)
        assert host.teardown(rec) == []
        assert md.exists() == keep
        if keep:
            assert sorted(os.listdir(md / "vol")) == ["0", "1"]


def test_reused_volume_mount_point_changes_kind(tmp_path):
    """vol/<n> of a range's previous holder may be a file where a directory is needed
    now, and the other way round."""
    from interceptd.runtime import host

    t = tmp_path / "vol" / "0"
    host._target_like(False, str(t))
    assert t.is_file()
    host._target_like(True, str(t))
    assert t.is_dir()
    host._target_like(False, str(t))
    assert t.is_file() and t.read_text() == ""


def test_fs_type():
    from interceptd.kernel import mountapi

    assert mountapi.fs_type("/proc") == 0x9FA0  # PROC_SUPER_MAGIC
    with pytest.raises(OSError):
        mountapi.fs_type("/nonexistent/path")


def test_record_without_keep_dirs_loads_as_per_container(tmp_path):
    """Records written before range-owned mount dirs load with keep_dirs False."""
    import json

    store = records.RecordStore(str(tmp_path))
    (tmp_path / "k.json").write_text(json.dumps({"key": "k", "container_id": "c",
                                                 "mount_dir": "/x/k"}))
    rec = store.load("k")
    assert rec is not None and rec.keep_dirs is False


def test_service_settings_cached_until_config_changes(tmp_path):
    from interceptd.runtime.service import Service

    cfg = tmp_path / "i.toml"
    cfg.write_text('[runtime]\nruntime = "/bin/true"\nsensitive_paths = ["/a"]\n')
    svc = Service(str(tmp_path / "state"))
    env = {"INTERCEPTD_CONFIG": str(cfg), "INTERCEPTD_STATE_DIR": str(tmp_path / "state")}
    st, state_dir = svc._settings(env)
    assert st.extra_sensitive_paths == ["/a"] and state_dir == svc.state_dir
    assert svc._settings(dict(env))[0] is st
    cfg.write_text('[runtime]\nruntime = "/bin/true"\nsensitive_paths = ["/a", "/bb"]\n')
    assert svc._settings(env)[0].extra_sensitive_paths == ["/a", "/bb"]
    other = svc._settings({**env, "INTERCEPTD_RUNTIME": "/bin/false"})[0]
    assert other.runtime == "/bin/false"


def test_delete_drops_the_record_before_the_range(tmp_path, monkeypatch):
    """Killed between the two steps, delete leaves a range without a record (freed by
    the next delete), never a record whose range another container may get."""
    from interceptd.runtime import argv
    from interceptd.runtime.jobs.delete import Delete

    st = settings.from_dict({"runtime": {"state_dir": str(tmp_path), "runtime": "/bin/true"}},
                            {})
    inv = argv.parse(["--root", "/r", "delete", "c1"])
    key = records.container_key("/r", "c1")
    pool = idpool.IdPool(st.runtime_dir, st.id_pool_start, st.id_pool_ranges)
    base = pool.allocate(key)
    store = records.RecordStore(os.path.join(st.runtime_dir, "containers"))
    md = tmp_path / "mnt" / f"r{base}"
    (md / "rootfs").mkdir(parents=True)
    store.save(records.Record(key=key, container_id="c1", host_base=base, mount_dir=str(md),
                              keep_dirs=True))

    def killed(self, k):
        raise SystemExit("killed")

    monkeypatch.setattr(idpool.IdPool, "release", killed)
    with pytest.raises(SystemExit):
        Delete(inv, st).finish(0)
    monkeypatch.undo()
    assert store.load(key) is None and pool.allocated() == {key: base}
    assert Delete(inv, st).finish(0) == 0
    assert pool.allocated() == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown and security.* xattrs need root")
def test_shift_back_strips_file_capability_of_a_file_becoming_roots(tmp_path):
    import struct

    top = tmp_path / "upper"
    top.mkdir()
    f = top / "capped"
    f.write_text("x")
    # VFS_CAP_REVISION_2 | effective, CAP_NET_RAW permitted.
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    base = 1 << 20
    os.chown(f, base, base)
    os.setxattr(f, "security.capability", cap)
    os.chown(top, base, base)
    g = top / "other"  # stays in the range (not root's after the shift): keeps it
    g.write_text("y")
    os.chown(g, base + 1000, base + 1000)
    os.setxattr(g, "security.capability", cap)
    shift.shift_tree(str(top), -base, base, base + 65536)
    assert os.stat(f).st_uid == 0
    with pytest.raises(OSError):
        os.getxattr(f, "security.capability")
    assert os.stat(g).st_uid == 1000
    assert os.getxattr(g, "security.capability") == cap
