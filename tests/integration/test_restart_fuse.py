"""The emulated files across daemon restarts (issues 10 and 14): a container's reader
that the daemon's FUSE server holds (its open parked for a render) when the daemon is
SIGKILLed gets its answer from the successor, which adopted the connection and had the
kernel resend what the dead one took (FUSE_NOTIFY_RESEND); a file opened before the
restart reads the container's bytes after it (a predecessor's file handle); a launcher
connecting to runtime.sock while no daemon runs is answered by the successor; after a
stop for good the mount is gone and a bind of the tree fails with ENOTCONN at once
rather than waiting for a successor. The looping containers: test_restart.py."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from interceptd.emulation.fuseserver import STALL_ENV
from tests.harness import Runtime
from tests.harness.runtime import output
from tests.harness.sdpeer import PeerDaemon
from tests.integration.test_restart import _config, tree_clone

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

STALLED = "/proc/loadavg"  # its renders wait while the flag exists
SCRIPT = r"""
exec 3</proc/uptime
echo opened
cat /proc/loadavg; echo "la_rc=$?"
echo "uptime=$(cat <&3)"
"""


def _wait(pred: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def test_reader_held_by_a_killed_daemon_is_answered(
        runtime: Runtime, bundle_factory: Callable[..., Any], workdir: Path,
        new_id: Callable[[str], str]) -> None:
    stall = workdir / "stall"
    stall.mkdir()
    flag = stall / STALLED.lstrip("/").replace("/", "_")
    flag.touch()
    d = PeerDaemon(workdir / "d", _config(), env={STALL_ENV: str(stall)})
    client: socket.socket | None = None
    try:
        d.start()
        with tree_clone(d, workdir / "emul") as tree:
            b = bundle_factory(
                args=["sh", "-c", SCRIPT], notify=["sysfs"], listener_path=d.listener_path,
                extra_mounts=[{"destination": p, "type": "bind", "source": f"{tree}{p}",
                               "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}
                              for p in ("/proc/uptime", STALLED)])
            with runtime.started(b, new_id("fusek")) as cid:
                d.wait_container(cid)
                # The open of /proc/loadavg is parked in the server (its render waits):
                # the daemon is killed well before the server's 1 s wait would end it.
                _wait(lambda: Path(f"{flag}.stalled").exists(), "no render stalled")
                d.kill()
                out = output(b)[0]
                assert "opened" in out and "la_rc" not in out, out
                flag.unlink()
                # A launcher connecting now waits in runtime.sock's backlog (the peer
                # holds the listening socket) and is answered by the successor.
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.settimeout(30)
                client.connect(str(d.state_dir / "runtime.sock"))
                client.sendall(b"not a request\n")
                time.sleep(0.3)  # the reader still waits: nothing answers the connection
                assert "la_rc" not in output(b)[0]
                d.start()
                reply = client.recv(4096)
                assert reply.startswith((b"ERR", b"FALLBACK")), reply
                _wait(lambda: "uptime=" in output(b)[0], f"reader never answered: {output(b)}")
                out = output(b)[0]
                assert "la_rc=0" in out, out
                assert re.search(r"^\d+\.\d\d \d+\.\d\d \d+\.\d\d \d+/\d+ \d+$", out, re.M), out
                # Read after the restart through the predecessor's handle: the
                # container's uptime (it started seconds ago), not the host's.
                up = re.search(r"uptime=([\d.]+) ([\d.]+)", out)
                assert up and float(up.group(1)) < 120, out
            st = d.control("status")["handover"]
            assert st["containers"] == 1, st
            stored = d.peer.stored_names()
            assert "runtime" in stored and sum(n.startswith("fuse-") for n in stored) == 1
            fs = str(d.state_dir / "fs")
            assert d.stop() == 0
            # For good: the mount is gone, the connection left the store (the peer
            # would have kept it alive) and a bind of the tree fails at once.
            assert any(m.get("FDSTOREREMOVE") == "1" and m.get("FDNAME", "").startswith("fuse-")
                       for m in d.peer.messages)
            with open("/proc/self/mountinfo") as f:
                assert not any(ln.split()[4] == fs for ln in f)
            r = subprocess.run(["cat", f"{tree}/proc/uptime"], capture_output=True, text=True,
                               timeout=10)
            assert r.returncode != 0 and "not connected" in r.stderr, r
    finally:
        if client is not None:
            client.close()
        flag.unlink(missing_ok=True)
        rc = d.stop()
        assert rc in (None, 0), d.log()[-6000:]
