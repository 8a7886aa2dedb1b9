import json
import os

import pytest

from interceptd.registry import (
    Container,
    DuplicateContainerError,
    Registry,
    parse_id_map,
    read_cgroup_paths,
    read_id_maps,
)


def make(cid="c1", started=100.0):
    return Container(id=cid, bundle="/b/" + cid, annotations={"a": "b"}, init_pid=42, pidfd=-1,
                     notify_fds=[5, 9], started_at=started, cgroup_paths={"": "/x/" + cid},
                     uid_map=[(0, 100000, 65536)], gid_map=[(0, 100000, 65536)],
                     channel=None, cookie=3)


def test_to_dict_is_json_and_complete():
    d = make().to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d == {
        "id": "c1", "bundle": "/b/c1", "annotations": {"a": "b"}, "init_pid": 42,
        "notify_fds": [5, 9], "started_at": 100.0, "cgroup_paths": {"": "/x/c1"},
        "uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]], "cookie": 3,
        "calls": {},
    }


def test_to_dict_carries_the_channel_call_counts():
    class Chan:
        closed = False

        def stats(self) -> dict[str, int]:
            return {"fast": 2, "python": 1, "native": 7}

    c = make()
    c.channel = Chan()
    assert c.to_dict()["calls"] == {"fast": 2, "python": 1, "native": 7}


def test_registry_add_get_remove_list():
    r = Registry()
    r.add(make("b", 2.0))
    r.add(make("a", 1.0))
    with pytest.raises(DuplicateContainerError):
        r.add(make("a"))
    assert [c.id for c in r.list()] == ["a", "b"]
    assert len(r) == 2
    assert r.get("a").init_pid == 42
    assert [c["id"] for c in r.to_dict()["containers"]] == ["a", "b"]
    assert r.remove("a").id == "a"
    assert r.remove("a") is None
    assert r.get("a") is None
    assert len(r) == 1


def test_parse_id_map():
    text = "         0     100000      65536\n     65536          0          1\n"
    assert parse_id_map(text) == [(0, 100000, 65536), (65536, 0, 1)]


def test_read_proc_files_of_self():
    cg = read_cgroup_paths(os.getpid())
    assert cg and all(v.startswith("/") for v in cg.values())
    uid, gid = read_id_maps(os.getpid())
    assert uid and gid


def test_read_fake_proc(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text("12:memory:/c\n0::/unified/c\n")
    assert read_cgroup_paths(7, proc=str(tmp_path)) == {"memory": "/c", "": "/unified/c"}
