"""The shim's cgroup v2 placement against the real unified hierarchy: a container init left
in the node it inherited from whoever ran the runtime is moved to a node of its own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid

import pytest

from interceptd.kernel import mountinfo
from interceptd.runtime import host
from interceptd.runtime.records import Record, RecordStore

pytestmark = pytest.mark.integration


def test_inherited_node_is_not_the_containers_own(tmp_path):
    root = mountinfo.cgroup2_mount(mountinfo.read())
    assert root, "this host has a cgroup v2 hierarchy"
    tag = uuid.uuid4().hex[:12]
    cid = f"cgtest-{tag}"
    store = RecordStore(str(tmp_path))
    rec = Record("k", cid)
    # Whoever ran the runtime sits in some node; the runtime's child inherits it.
    parent = os.path.join(root, f"interceptd-test-{tag}")
    os.mkdir(parent)
    caller = subprocess.Popen(["sleep", "30"])
    child = subprocess.Popen(["sleep", "30"])
    try:
        for p in (caller, child):
            with open(os.path.join(parent, "cgroup.procs"), "w") as f:
                f.write(str(p.pid))
        assert host.cgroup2_path(child.pid) == host.cgroup2_path(caller.pid) != "/"
        node = host.place_in_cgroup2(rec, store, child.pid, root, cid, caller.pid)
        assert node == os.path.join(root, "interceptd", cid)
        assert host.cgroup2_path(child.pid) == f"/interceptd/{cid}"
        assert rec.cgroup_node == node  # recorded, so delete removes it
        # Now in a node of its own: left there.
        assert host.place_in_cgroup2(rec, store, child.pid, root, cid, caller.pid) == node
        # Without a caller to compare with, a non-root node counts as its own (runc's).
        assert host.place_in_cgroup2(rec, store, caller.pid, root, "x") == parent
    finally:
        for p in (caller, child):
            p.kill()
            p.wait()
        for d in (rec.cgroup_node, parent):
            if d:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
