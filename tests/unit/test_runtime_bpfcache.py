"""bpfcache: crun's compiled seccomp filter kept per (runtime binary, section) and the
callers' run.oci.seccomp* annotations refused."""

from __future__ import annotations

import base64
import os

import pytest

from interceptd.runtime import bpfcache
from interceptd.runtime import spec as sp

SECTION = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
BPF = bytes(range(8)) * 5  # five instructions


@pytest.mark.parametrize("name", ["run.oci.seccomp_bpf_data", "run.oci.seccomp.receiver",
                                  "run.oci.seccomp.plugins", "run.oci.seccomp_other"])
def test_annotations_that_replace_the_filter_refused(name):
    with pytest.raises(sp.Refused, match=name):
        bpfcache.check_annotations({"annotations": {name: "x"}})


def test_other_annotations_allowed():
    bpfcache.check_annotations({"annotations": {"run.oci.seccomp_fail_unknown_syscall": "1",
                                                "run.oci.keep_original_groups": "1"}})
    bpfcache.check_annotations({})


def test_digest_ignores_listener_only():
    d = bpfcache.section_digest(SECTION)
    assert d == bpfcache.section_digest(dict(SECTION, listenerPath="/x",
                                             listenerMetadata="c1"))
    assert d != bpfcache.section_digest(dict(SECTION, defaultAction="SCMP_ACT_KILL"))
    assert d != bpfcache.section_digest(dict(SECTION, flags=["SECCOMP_FILTER_FLAG_LOG"]))


def test_add_seccomp_returns_the_digest_of_what_it_wrote():
    spec: dict = {"linux": {"seccomp": dict(SECTION)}}
    d = sp.add_seccomp(spec, ["mount"], [], "/run/l.sock", "c1")
    assert d == bpfcache.section_digest(spec["linux"]["seccomp"])
    other: dict = {"linux": {"seccomp": dict(SECTION)}}
    assert sp.add_seccomp(other, ["mount"], [], "/run/l.sock", "c2") == d


def crun_state(root, cid: str, data: bytes = BPF, status: bool = True):
    d = root / cid
    d.mkdir(parents=True)
    os.chmod(root, 0o700)
    os.chmod(d, 0o700)
    (d / "seccomp.bpf").write_bytes(data)
    if status:
        (d / "status").write_text("1")
    return d


def test_read_compiled_takes_only_root_owned_whole_instructions(tmp_path):
    root = tmp_path / "crun"
    d = crun_state(root, "c1")
    assert bpfcache.read_compiled(str(root), "c1") == BPF
    assert bpfcache.read_compiled(str(root), "../crun/c1") is None
    os.chmod(d / "seccomp.bpf", 0o666)
    assert bpfcache.read_compiled(str(root), "c1") is None
    os.chmod(d / "seccomp.bpf", 0o600)
    os.chmod(d, 0o777)
    assert bpfcache.read_compiled(str(root), "c1") is None
    os.chmod(d, 0o700)
    (d / "seccomp.bpf").write_bytes(BPF + b"x")
    assert bpfcache.read_compiled(str(root), "c1") is None
    (d / "seccomp.bpf").write_bytes(b"")
    assert bpfcache.read_compiled(str(root), "c1") is None
    os.unlink(d / "seccomp.bpf")
    (tmp_path / "elsewhere").write_bytes(BPF)
    os.symlink(tmp_path / "elsewhere", d / "seccomp.bpf")
    assert bpfcache.read_compiled(str(root), "c1") is None


def test_cache_collects_and_keys_on_runtime_binary(tmp_path):
    runtime = tmp_path / "crun"
    runtime.write_text("#!/bin/sh\n")
    root = tmp_path / "state"
    crun_state(root, "c1")
    c = bpfcache.BpfCache()
    d = bpfcache.section_digest(SECTION)
    assert c.lookup(str(runtime), d) == (None, True)
    assert c.collect(str(runtime), d, str(root), "/", "c1")
    assert c.lookup(str(runtime), d) == (base64.b64encode(BPF).decode(), True)
    assert c.lookup(str(runtime), "other") == (None, True)
    # Relative --root: from the caller's cwd.
    crun_state(root, "c2", BPF * 2)
    assert c.collect(str(runtime), "d2", "state", str(tmp_path), "c2")
    assert c.lookup(str(runtime), "d2")[0] == base64.b64encode(BPF * 2).decode()
    # Another binary (an upgrade): nothing kept applies.
    os.utime(runtime, ns=(1, 1))
    assert c.lookup(str(runtime), d) == (None, True)


def test_runtime_without_compiled_filter_marked(tmp_path):
    runtime = tmp_path / "runc"
    runtime.write_text("")
    root = tmp_path / "state"
    (root / "gone").mkdir(parents=True)
    c = bpfcache.BpfCache()
    # The container already gone: proves nothing, asked again next time.
    assert not c.collect(str(runtime), "d", str(root), "/", "nothere")
    assert c.lookup(str(runtime), "d") == (None, True)
    (root / "r1").mkdir()
    (root / "r1" / "state.json").write_text("{}")
    assert not c.collect(str(runtime), "d", str(root), "/", "r1")
    assert c.lookup(str(runtime), "d") == (None, False)


def test_cache_bounded(tmp_path):
    runtime = tmp_path / "crun"
    runtime.write_text("")
    root = tmp_path / "state"
    c = bpfcache.BpfCache(size=2)
    for i in range(3):
        crun_state(root, f"c{i}")
        assert c.collect(str(runtime), f"d{i}", str(root), "/", f"c{i}")
    assert c.lookup(str(runtime), "d0")[0] is None
    assert c.lookup(str(runtime), "d2")[0] is not None
