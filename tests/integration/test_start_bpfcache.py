"""crun's compiled seccomp filter, reused through the prepare service (runtime/bpfcache.py):
the next container with the same section gets exactly what crun compiled for the
first, and answers every probe as before, interceptd's rules and listener included.
runc takes no compiled filter and is never given one. A caller's own
run.oci.seccomp_bpf_data is refused."""

# ruff: noqa: F811
from __future__ import annotations

import base64
import errno
import json
import time

import pytest

from tests.harness import seccompprofiles as profiles
from tests.harness.runtime import output
from tests.integration.policy_support import parse
from tests.integration.test_runtime_shim import (  # noqa: F401
    assert_nothing_left,
    launcher,
    plain_bundle,
    refused,
    service,
    shim,
)
from tests.integration.test_seccomp_profiles import ADDED, DOCKER_PROBES, docker_bundle, script

pytestmark = pytest.mark.integration

ANN = "run.oci.seccomp_bpf_data"


def test_compiled_filter_reused(shim, service, launcher, runtime_factory, bundle_factory,
                                new_id):
    shim.binary = launcher
    plain = runtime_factory(shim.name)
    res = plain.run(docker_bundle(bundle_factory, DOCKER_PROBES, profiles.resolved()),
                    new_id("bpfraw"), timeout=60)
    assert res.rc == 0, res.stderr
    want = parse(res.stdout)
    assert want["mount"] == (-1, errno.EPERM) and want["clone3"] == (-1, errno.ENOSYS)

    probes = {**DOCKER_PROBES, **ADDED}
    b1 = docker_bundle(bundle_factory, probes, profiles.resolved())
    first = new_id("bpf1")
    shim.create(b1, first)
    try:
        assert ANN not in json.loads(b1.config_path.read_text())["annotations"]
        # What crun compiled itself (runc keeps none).
        state = shim.root / first / "seccomp.bpf"
        compiled = state.read_bytes() if shim.name == "crun" else None
        # The service collects it after the launcher's report, off the create's path.
        time.sleep(1.0)
        run_to_exit(shim, first)
    finally:
        shim.delete(first)

    b2 = docker_bundle(bundle_factory, probes, profiles.resolved())
    second = new_id("bpf2")
    shim.create(b2, second)
    try:
        ann = json.loads(b2.config_path.read_text())["annotations"].get(ANN)
        if shim.name == "crun":
            assert compiled and ann and base64.b64decode(ann) == compiled
        else:
            assert ann is None
            assert not (shim.root / second / "seccomp.bpf").exists()
        run_to_exit(shim, second)
    finally:
        shim.delete(second)
    # An exec'd process of a container started from the kept filter: crun execs with
    # the filter in its state (the same bytes), its notify fd goes to the daemon.
    b3 = docker_bundle(bundle_factory, probes, profiles.resolved())
    b3.config["process"]["args"] = ["sleep", "60"]
    b3.write_config()
    third = new_id("bpf3")
    with shim.started(b3, third):
        ann = json.loads(b3.config_path.read_text())["annotations"].get(ANN)
        assert (ann is not None) == (shim.name == "crun")
        res = shim.exec(third, ["sh", "-c", script(probes)], timeout=60)
        assert res.rc == 0, res.stderr
        # The daemon got the notify fds of the init and of the exec'd process.
        log = shim.daemon.log()
        attached = [ln for ln in log.splitlines()
                    if f" attach container={third} " in ln]
        assert any("init=True" in ln for ln in attached), log[-2000:]
        assert any("init=False" in ln for ln in attached), log[-2000:]
    outs = [output(b1)[0], output(b2)[0], res.stdout]
    for out in outs:
        got = parse(out)
        assert {k: got.get(k) for k in DOCKER_PROBES} == want, out
        assert got["io_uring_setup"] == (-1, errno.EPERM)
        assert got["vsock"] == got["vsock_hi"] == (-1, errno.EPERM)
        assert got["listener"] == (-1, errno.EINVAL)
    assert_nothing_left(shim)


def run_to_exit(rt, cid: str) -> None:
    rt.start(cid)
    for _ in range(600):
        if rt.state(cid)["status"] == "stopped":
            return
        time.sleep(0.05)
    pytest.fail(f"{cid} did not exit")


def test_callers_compiled_filter_refused(shim, service, launcher, bundle_factory, new_id):
    """crun would install the caller's raw filter instead of the composed one."""
    shim.binary = launcher
    b = plain_bundle(bundle_factory, ["true"])
    b.config.setdefault("annotations", {})[ANN] = base64.b64encode(b"\0" * 8).decode()
    b.write_config()
    refused(shim, b, new_id("bpfown"), ANN)
