"""Keyrings inside a hardened container (add_key/keyctl allowed by default): the
container's root has its own keys and session keyrings, the host root's stay out of reach
(the kernel keys permissions and per-user keyrings by the mapped uid)."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.harness import Daemon, Runtime
from tests.integration.policy_support import EPERM, privileged, probe, run_script
from tests.integration.test_runtime_shim import plain_bundle, shim  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

NR_ADD_KEY, NR_KEYCTL = 248, 250
KEY_SPEC_USER_KEYRING = -4
KEYCTL_INVALIDATE = 21

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@pytest.fixture(params=["runc", "crun"])
def rt(request: pytest.FixtureRequest, runtime_factory: Callable[[str], Runtime]) -> Runtime:
    return runtime_factory(request.param)


@pytest.fixture
def host_key(new_id) -> Iterator[tuple[str, int]]:
    """A key in the host root's user keyring (the test runs as host root)."""
    desc = new_id("icdkey")
    payload = b"host-secret"
    serial = _libc.syscall(ctypes.c_long(NR_ADD_KEY), b"user", desc.encode(), payload,
                           ctypes.c_size_t(len(payload)), ctypes.c_int(KEY_SPEC_USER_KEYRING))
    if serial < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    try:
        yield desc, int(serial)
    finally:
        _libc.syscall(ctypes.c_long(NR_KEYCTL), ctypes.c_int(KEYCTL_INVALIDATE),
                      ctypes.c_long(serial))


def script(desc: str, serial: int) -> str:
    return "\n".join([
        # the host root's key: not in the container root's @u, not viewable by serial
        probe("search_host_u", f"sys keyctl 10 -4 s:user s:{desc} 0"),
        probe("describe_host", f"sys keyctl 6 {serial} b:256 256"),
        probe("read_host", f"sys keyctl 11 {serial} b:256 256"),
        probe("link_host", f"sys keyctl 8 {serial} -3"),
        # the container's own keys and keyrings
        probe("join_session", "sys keyctl 1 s:icd-inner"),
        probe("add_own", "sys add_key s:user s:mine s:v 1 -3"),
        probe("search_own", "sys keyctl 10 -3 s:user s:mine 0"),
        probe("add_own_u", "sys add_key s:user s:mine-u s:v 1 -4"),
        probe("request_key", "sys request_key s:user s:nothing-here s:callout -3"),
    ])


def test_host_root_keys_out_of_reach(rt, bundle_factory, daemon: Daemon, new_id, host_key):
    desc, serial = host_key
    out = run_script(rt, privileged(bundle_factory, daemon, script(desc, serial)),
                     new_id("key"))
    assert out["search_host_u"] == (-1, errno.ENOKEY), out
    for k in ("describe_host", "read_host", "link_host"):
        assert out[k] == (-1, errno.EACCES), (k, out)
    for k in ("join_session", "add_own", "search_own", "add_own_u"):
        assert out[k][0] > 0 and out[k][1] == 0, (k, out)
    assert out["request_key"] == (-1, EPERM)  # the deny list: an upcall on the host
    # the key is still there for the host root (the container's tries changed nothing)
    r = _libc.syscall(ctypes.c_long(NR_KEYCTL), ctypes.c_int(10),
                      ctypes.c_int(KEY_SPEC_USER_KEYRING), b"user", desc.encode(),
                      ctypes.c_int(0))
    assert r == serial


def test_no_new_keyring_is_dropped(shim, bundle_factory, new_id):  # noqa: F811
    """Whoever runs the runtime with --no-new-keyring would hand the container its own
    session keyring, and possession grants the container its keys: interceptd-runc drops
    the flag. The runtime here runs in a session keyring holding a host key; the container
    must not find it (without the shim it does: the control)."""
    desc = new_id("icdsess")
    b = plain_bundle(bundle_factory, ["sys", "keyctl", "10", "-3", "s:user", f"s:{desc}", "0"])

    def in_session_with_key() -> None:  # in the runtime's child, before exec
        _libc.syscall(ctypes.c_long(NR_KEYCTL), ctypes.c_int(1), None)  # new session
        _libc.syscall(ctypes.c_long(NR_ADD_KEY), b"user", desc.encode(), b"s",
                      ctypes.c_size_t(1), ctypes.c_int(-3))

    results = {}
    for name, binary in (("plain", shim.name), ("shim", shim.binary)):
        cid = new_id("nnk")
        cmd = [binary, "--root", str(shim.root), "run", "--no-new-keyring",
               "--bundle", str(b.path), cid]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, preexec_fn=in_session_with_key)
        subprocess.run([binary, "--root", str(shim.root), "delete", "-f", cid],
                       capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        results[name] = p.stdout.strip()
    assert results["plain"].startswith("ret=") and not results["plain"].startswith("ret=-1")
    assert results["shim"] == f"ret=-1 errno={errno.ENOKEY}", results
