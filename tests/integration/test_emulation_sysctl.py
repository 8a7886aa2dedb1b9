"""/proc/sys inside real containers started by interceptd-runc over runc and crun: a
container-only value is seen by the container that wrote it alone (not the host, not a
sibling); a host-wide sysctl refuses the write with EACCES and keeps the host's value;
a namespaced one is the container's own namespace's; the "max" rule (fs/file-max)
raises the host's value but never lowers it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.harness import Runtime
from tests.integration.test_runtime_shim import assert_nothing_left, plain_bundle, shim

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]
__all__ = ["shim"]  # the fixture, shared with test_runtime_shim


def host(name: str) -> str:
    return Path(f"/proc/sys/{name}").read_text().strip()


def set_host(name: str, value: str) -> None:
    Path(f"/proc/sys/{name}").write_text(value + "\n")


def kv(out: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(.*)$", out, flags=re.M))


def test_sysctl_writes_in_a_container(shim: Runtime, bundle_factory, new_id) -> None:
    em = shim.daemon.control("status")["emulation"]  # type: ignore[attr-defined]
    assert "/proc/sys/kernel/panic" in em["files"]
    host_name = os.uname().nodename
    before = {n: host(n) for n in ("kernel/panic", "vm/swappiness", "net/ipv4/ip_forward",
                                   "kernel/dmesg_restrict", "fs/file-max",
                                   "net/netfilter/nf_conntrack_max")}
    ct_raised = str(int(before["net/netfilter/nf_conntrack_max"]) + 16)
    panic = "7" if before["kernel/panic"] != "7" else "8"
    raised = str(int(before["fs/file-max"]) + 1000)
    a = plain_bundle(bundle_factory, ["sleep", "120"], caps="all")
    b = plain_bundle(bundle_factory, ["sh", "-c",
                                      "echo panic=$(cat /proc/sys/kernel/panic);"
                                      "echo filemax=$(cat /proc/sys/fs/file-max)"],
                     caps="all")
    script = f"""
sysctl -w kernel.panic={panic} >/dev/null; echo panic_rc=$?
echo panic=$(cat /proc/sys/kernel/panic)
echo 1 > /proc/sys/kernel/dmesg_restrict; echo dmesg_rc=$?
echo abc > /proc/sys/kernel/panic 2>/dev/null; echo bad_rc=$?
echo panic_after_bad=$(cat /proc/sys/kernel/panic 2>&1)
{{ echo 30 > /proc/sys/vm/swappiness; }} 2>/tmp/err; echo swappiness_rc=$?
echo swappiness_err=$(cat /tmp/err)
{{ echo 5 > /proc/sys/kernel/cap_last_cap; }} 2>/tmp/err; echo caplast_rc=$?
echo caplast_err=$(cat /tmp/err)
echo 1 > /proc/sys/net/ipv4/ip_forward; echo fwd_rc=$?
echo fwd=$(cat /proc/sys/net/ipv4/ip_forward)
echo 4096 > /proc/sys/kernel/msgmax; echo msgmax_rc=$?
echo other > /proc/sys/kernel/hostname; echo uts_rc=$?
echo uts_name=$(hostname) uts_file=$(cat /proc/sys/kernel/hostname)
hostname third; echo uts_file2=$(cat /proc/sys/kernel/hostname)
echo {raised} > /proc/sys/fs/file-max; echo raise_rc=$?
echo 1000 > /proc/sys/fs/file-max; echo lower_rc=$?
echo filemax=$(cat /proc/sys/fs/file-max)
echo {ct_raised} > /proc/sys/net/netfilter/nf_conntrack_max; echo ct_rc=$?
mkdir -p /tmp/p && mount -t proc proc /tmp/p && echo fresh_panic=$(cat /tmp/p/sys/kernel/panic)
unshare -m --mount-proc sh -c 'echo unshared_panic=$(cat /proc/sys/kernel/panic)'
umount /proc/sys/kernel/panic; echo umount_rc=$?
echo panic_end=$(cat /proc/sys/kernel/panic)
"""
    try:
        with shim.started(a, new_id("psys-a")) as cid:
            res = shim.exec(cid, ["sh", "-c", script])
            out = kv(res.stdout)
            assert out.get("panic_rc") == "0", res.stdout + res.stderr
            assert out["panic"] == panic
            assert out["dmesg_rc"] == "0"
            assert out["bad_rc"] != "0" and out["panic_after_bad"] == panic
            # Host-wide: the kernel refuses the container's root.
            assert out["swappiness_rc"] != "0"
            assert "Permission denied" in out["swappiness_err"], res.stdout
            assert out["caplast_rc"] != "0" and "Permission denied" in out["caplast_err"]
            # Namespaced: the container's own network namespace.
            assert out["fwd_rc"] == "0" and out["fwd"] == "1"
            assert out["msgmax_rc"] == "0"  # IPC: its own namespace's
            # UTS through /proc/sys: the kernel lets only the initial namespace's root
            # write that file, so the daemon passes it on to the container's namespace.
            assert out["uts_rc"] == "0", res.stdout
            assert out["uts_name"] == "other uts_file=other", res.stdout
            assert out["uts_file2"] == "third"  # sethostname(2) shows there too
            assert os.uname().nodename == host_name
            # Max rule: raised on the host, never lowered; the container sees its own.
            assert out["raise_rc"] == "0" and out["lower_rc"] == "0"
            assert out["filemax"] == "1000"
            assert host("fs/file-max") == raised
            # nf_conntrack_max: read-only in a container's network namespace, one value
            # for the host: raised there.
            assert out["ct_rc"] == "0", res.stdout
            assert host("net/netfilter/nf_conntrack_max") == ct_raised
            # A fresh procfs, and one after unshare --mount-proc, get the bind too; it
            # cannot be unmounted.
            assert out["fresh_panic"] == panic and out["unshared_panic"] == panic, res.stdout
            assert out["umount_rc"] != "0" and out["panic_end"] == panic
            # The host kept its values; a sibling sees the host's.
            for n in ("kernel/panic", "vm/swappiness", "net/ipv4/ip_forward",
                      "kernel/dmesg_restrict"):
                assert host(n) == before[n], n
            sib = kv(shim.run(b, new_id("psys-b")).check().stdout)
            assert sib == {"panic": before["kernel/panic"], "filemax": raised}
            # And the writer still reads its own.
            again = shim.exec(cid, ["cat", "/proc/sys/kernel/panic"])
            assert again.stdout.strip() == panic
    finally:
        set_host("fs/file-max", before["fs/file-max"])
        set_host("net/netfilter/nf_conntrack_max", before["net/netfilter/nf_conntrack_max"])
    logs = shim.daemon.log()  # type: ignore[attr-defined]
    assert "sysctl write refused" in logs and "not a number" in logs
    assert_nothing_left(shim)


def test_first_instruction_writes_a_served_value(shim: Runtime, bundle_factory,
                                                 new_id) -> None:
    """The container's very first command writes and reads a served value (what
    systemd-sysctl does at boot): the createContainer hook bound it before the
    container ran, so the write reaches the daemon, not the kernel's file (EACCES),
    and the daemon's attach finds nothing left to bind."""
    before = host("kernel/panic")
    panic = "7" if before != "7" else "8"
    script = f"""echo {panic} > /proc/sys/kernel/panic; echo rc=$?
echo panic=$(cat /proc/sys/kernel/panic)
echo binds=$(grep -c ' /proc/sys/kernel/panic .* - fuse.interceptd ' /proc/self/mountinfo)
umount /proc/sys/kernel/panic 2>/dev/null; echo umount_rc=$?
umount -l /proc/sys/kernel/panic 2>/dev/null; echo lazy_rc=$?
mkdir -p /tmp/m; touch /tmp/m/f
mount --move /proc/sys/kernel/panic /tmp/m/f 2>/dev/null; echo move_rc=$?
echo unshared=$(unshare -m --mount-proc cat /proc/sys/kernel/panic)
echo end=$(cat /proc/sys/kernel/panic)
"""
    b = plain_bundle(bundle_factory, ["sh", "-c", script], caps="all")
    cid = new_id("psys-first")
    res = shim.run(b, cid).check()
    out = kv(res.stdout)
    # One bind (the hook's), not a second one from the daemon's attach; immutable as
    # the attach's binds are, and in a fresh procfs too.
    assert out == {"rc": "0", "panic": panic, "binds": "1", "umount_rc": "1",
                   "lazy_rc": "1", "move_rc": "1", "unshared": panic,
                   "end": panic}, res.stdout + res.stderr
    assert host("kernel/panic") == before
    logs = shim.daemon.log()  # type: ignore[attr-defined]
    mine = [ln for ln in logs.splitlines() if cid in ln]
    assert not [ln for ln in mine if "/proc/sys values" in ln], mine
    assert_nothing_left(shim)
