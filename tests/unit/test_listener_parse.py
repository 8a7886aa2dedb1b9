import json
from pathlib import Path

import pytest

from interceptd.ocistate import MAX_MESSAGE, ListenerReject, parse_state

RUNC = (
    b'{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":4242,"metadata":"meta",'
    b'"state":{"ociVersion":"1.0.2-dev","id":"c-runc","status":"creating","pid":4242,'
    b'"bundle":"/tmp/b1","annotations":{"org.example":"v"}}}'
)

CRUN = b"""{
    "ociVersion": "0.2.0",
    "fds": [
        "seccompFd"
    ],
    "pid": 5151,
    "metadata": "",
    "state": {
        "ociVersion": "1.0.0",
        "id": "c-crun",
        "status": "creating",
        "pid": 5151,
        "bundle": "/tmp/b2"
    }
}
"""


def doc(**over):
    d = json.loads(RUNC)
    for k, v in over.items():
        if k.startswith("state_"):
            d["state"][k[6:]] = v
        else:
            d[k] = v
    return d


def test_runc_shape():
    s = parse_state(RUNC)
    assert s.oci_version == "1.0.2-dev"
    assert s.fds == ["seccompFd"]
    assert s.pid == 4242
    assert s.metadata == "meta"
    assert s.state.id == "c-runc"
    assert s.state.status == "creating"
    assert s.state.bundle == "/tmp/b1"
    assert s.state.annotations == {"org.example": "v"}
    assert s.is_init
    assert s.init_pid == 4242


def test_crun_shape_pretty_without_annotations():
    s = parse_state(CRUN)
    assert s.oci_version == "0.2.0"
    assert s.pid == 5151
    assert s.state.id == "c-crun"
    assert s.state.annotations == {}
    assert s.is_init


def test_exec_running():
    d = doc(pid=4300, state_status="running")
    s = parse_state(json.dumps(d).encode())
    assert not s.is_init
    assert s.pid == 4300
    assert s.init_pid == 4242


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_captured_messages(runtime):
    init = parse_state((DATA / f"{runtime}-init.json").read_bytes())
    ex = parse_state((DATA / f"{runtime}-exec.json").read_bytes())
    assert init.is_init and not ex.is_init
    assert init.state.id == ex.state.id == f"capture-{runtime}"
    assert init.init_pid > 0
    assert init.metadata == ex.metadata == "test-metadata"
    assert init.state.annotations == {"org.example.key": "value"}
    if runtime == "crun":
        assert init.oci_version == "0.2.0"
        assert (ex.pid, ex.state.pid, ex.state.bundle) == (0, 0, ".")
    else:
        assert ex.init_pid == init.init_pid and ex.pid != ex.init_pid


def test_top_level_pid_zero_allowed_when_state_has_it():
    s = parse_state(json.dumps(doc(pid=0)).encode())
    assert s.init_pid == 4242


def test_metadata_optional_and_annotations_null():
    d = doc(state_annotations=None)
    del d["metadata"]
    s = parse_state(json.dumps(d).encode())
    assert s.metadata == ""
    assert s.state.annotations == {}


def _drop(path):
    d = json.loads(RUNC)
    if "." in path:
        a, b = path.split(".")
        del d[a][b]
    else:
        del d[path]
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello", "not json"),
        (b"", "not json"),
        (b"\xff\xfe{", "not json"),
        (RUNC[:-1], "not json"),
        (b"[1,2]", "bad message"),
        (_drop("fds"), "missing field"),
        (_drop("pid"), "missing field"),
        (_drop("ociVersion"), "missing field"),
        (_drop("state"), "missing field"),
        (_drop("state.id"), "missing field"),
        (_drop("state.status"), "missing field"),
        (_drop("state.bundle"), "missing field"),
        (json.dumps(doc(fds=[])).encode(), "bad message"),
        (json.dumps(doc(fds=["seccompFd", "seccompFd"])).encode(), "bad message"),
        (json.dumps(doc(fds="seccompFd")).encode(), "bad message"),
        (json.dumps(doc(pid="12")).encode(), "bad message"),
        (json.dumps(doc(pid=0, state_pid=0)).encode(), "bad message"),
        (json.dumps(doc(pid=-3)).encode(), "bad message"),
        (json.dumps(doc(pid=True)).encode(), "bad message"),
        (json.dumps(doc(pid=2**40)).encode(), "bad message"),
        (json.dumps(doc(state_status="stopped")).encode(), "bad message"),
        (json.dumps(doc(state_id="")).encode(), "bad message"),
        (json.dumps(doc(state_id="a\nb")).encode(), "bad message"),
        (json.dumps(doc(state="x")).encode(), "bad message"),
        (json.dumps(doc(state_annotations={"a": 1})).encode(), "bad message"),
        (json.dumps(doc(metadata=5)).encode(), "bad message"),
        (b"{" + b" " * MAX_MESSAGE + b"}", "too large"),
    ],
)
def test_malformed(data, reason):
    with pytest.raises(ListenerReject) as ei:
        parse_state(data)
    assert ei.value.reason == reason
