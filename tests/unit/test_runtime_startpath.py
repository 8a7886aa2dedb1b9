"""The start-latency work of the prepare path: what it caches stays correct."""

from __future__ import annotations

import json
import os
import time

import pytest

from interceptd.runtime import host, records, seccomp, seccomp_default, timing
from interceptd.runtime import spec as sp

NOTIFY = ["mount", "umount2"]
DENY = [{"names": ["io_uring_setup"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]


def test_composed_profile_cached_per_profile_and_metadata_per_container():
    a: dict = {"linux": {}}
    b: dict = {"linux": {}}
    sp.add_seccomp(a, NOTIFY, DENY, "/run/x.sock", "c1")
    sp.add_seccomp(b, NOTIFY, DENY, "/run/x.sock", "c2")
    assert a["linux"]["seccomp"]["listenerMetadata"] == "c1"
    assert b["linux"]["seccomp"]["listenerMetadata"] == "c2"
    fresh = seccomp.compose(seccomp_default.profile(), NOTIFY, DENY, "/run/x.sock", "c1")
    assert json.dumps(a["linux"]["seccomp"], sort_keys=True) == json.dumps(fresh, sort_keys=True)
    # Another profile, another listener: never the cached one.
    own = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    c: dict = {"linux": {"seccomp": own}}
    sp.add_seccomp(c, NOTIFY, DENY, "/run/x.sock", "c3")
    assert c["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    d: dict = {"linux": {}}
    sp.add_seccomp(d, NOTIFY, DENY, "/run/y.sock", "c4")
    assert d["linux"]["seccomp"]["listenerPath"] == "/run/y.sock"
    # The caller's own profile is never changed by the composition.
    assert own == {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}


def test_phases_written_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(timing.ENV, raising=False)
    ph = timing.Phases()
    ph.mark("a")
    ph.write(cid="x")
    out = tmp_path / "t.jsonl"
    monkeypatch.setenv(timing.ENV, str(out))
    ph = timing.Phases()
    ph.mark("a")
    ph.mark("b")
    ph.write(cid="x", command="create")
    line = json.loads(out.read_text())
    assert line["cid"] == "x" and set(line) == {"cid", "command", "a", "b"}


def test_teardown_finds_the_emulated_tree_without_a_record_entry(tmp_path):
    """The emulated tree is not saved in the record: teardown finds it under mount_dir."""
    md = tmp_path / "r1"
    (md / "emul").mkdir(parents=True)
    assert str(md / "emul") in host._mount_points(str(md))
    rec = records.Record(key="k", container_id="c", mount_dir=str(md), keep_dirs=False)
    assert host.teardown(rec) == []
    assert not md.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="user namespaces with a host mapping need root")
def test_userns_warmed_ahead_is_what_get_returns():
    from interceptd.runtime.service import UsernsCache

    cache = UsernsCache(size=4)
    try:
        base = 3_500_000_000
        cache.warm(base, 65536)
        deadline = time.monotonic() + 10
        while (base, 65536) not in cache._items and time.monotonic() < deadline:
            time.sleep(0.01)
        ns = cache._items[(base, 65536)]
        got = cache.get(base, 65536)
        try:
            assert os.stat(f"/proc/self/fd/{got.fd}").st_ino == os.fstat(ns.fd).st_ino
            pid = os.getpid()
            assert os.readlink(f"/proc/{pid}/fd/{got.fd}").startswith("user:[")
        finally:
            got.close()
        cache.warm(base, 65536)  # cached: nothing started
        assert not cache._warming
    finally:
        cache.close()
