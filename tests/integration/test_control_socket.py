"""A real daemon's control socket under garbage, huge lines and a stalled trace
client: other trace clients get every event, and the daemon answers on."""

from __future__ import annotations

import contextlib
import json
import socket
import time

from tests.harness import Runtime
from tests.integration.test_ebpf import Trace, wait_trace_clients


def test_garbage_huge_lines_and_a_stalled_client(runtime: Runtime, bundle_factory,
                                                 daemon_factory, new_id):
    d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 5}])
    ctl = str(d.control_sock)
    # A trace client that asks and then never reads, with a small receive buffer.
    stalled = socket.socket(socket.AF_UNIX)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(ctl)
    stalled.sendall(b'{"cmd":"trace"}\n')
    garbage = socket.socket(socket.AF_UNIX)
    garbage.connect(ctl)
    garbage.sendall(b"\x00\xff\xfe not json at all\n{\"cmd\": 12}\n[1,2]\n")
    huge = socket.socket(socket.AF_UNIX)
    huge.connect(ctl)
    with contextlib.suppress(OSError):  # the daemon may have hung up on it already
        huge.sendall(b"x" * (1 << 20))  # no newline: over the line limit
    cid = new_id("robust")
    good = Trace(d, "--container", cid, "--count", "3000")
    try:
        wait_trace_clients(d, 2)
        b = bundle_factory(args=["sh", "-c", "sleep 0.2; sys -n 3000 sysfs 3"], notify=["sysfs"],
                           listener_path=d.listener_path)
        t0 = time.monotonic()
        assert runtime.run(b, cid).check().stdout.strip() == "ret=5 errno=0"
        evs = good.events(3000, 20)
        assert len(evs) == 3000, len(evs)
        assert all(e["syscall"] == "sysfs" and e["value"] == 5 for _, e in evs)
        assert time.monotonic() - t0 < 15
        # The garbage got its answers; the daemon answers everyone else.
        garbage.settimeout(5)
        answers = garbage.recv(65536).decode().splitlines()
        assert answers and all(json.loads(a)["ok"] is False for a in answers)
        st = d.control("status")
        assert st["ok"] and d.alive()
        errors = st["counters"].get("control_errors", {})
        assert errors.get("bad request", 0) >= 1
    finally:
        good.stop()
        for s in (stalled, garbage, huge):
            s.close()
