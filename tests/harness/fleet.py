"""Many containers attached to one daemon at once (issue 14: load, RSS, attach time).

Each container of a `Fleet` loops over the notified sysfs(2), answered by the test
handler (tests/harness/handlers.py) from the container's own annotation, so an answer
routed to the wrong container shows up as a wrong value in its output. Used by
tests/integration/test_ops_load.py and bench/bench_ops.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import Bundle, BundleSpec
from .daemon import Daemon
from .handlers import ANNOTATION
from .runtime import Runtime, output

HANDLERS = {"handlers": {"modules": ["tests.harness.handlers"]}}
# A container makes a few notified calls then sleeps: 100 of them at full speed would
# measure the machine, not the daemon.
LOOP = "while :; do sys -n 5 sysfs 3; sleep 0.2; done"


def expected(i: int) -> str:
    return f"ret={5000 + i} errno=0"


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Fleet:
    runtime: Runtime
    daemon: Daemon
    make_bundle: Callable[[BundleSpec], Bundle]
    prefix: str
    bundles: dict[str, Bundle] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)
    attach_s: dict[str, float] = field(default_factory=dict)

    def prepare(self, n: int, workers: int = 8) -> list[str]:
        """n bundles (rootfs copies), made ahead so the start times measure the start."""
        ids = [f"{self.prefix}-{len(self.bundles) + i}" for i in range(n)]
        base = len(self.bundles)

        def make(i: int) -> Bundle:
            return self.make_bundle(BundleSpec(
                args=["sh", "-c", LOOP], notify=["sysfs"],
                listener_path=self.daemon.listener_path,
                annotations={ANNOTATION: f"value:{5000 + base + i}"}))

        with ThreadPoolExecutor(workers) as pool:
            made = list(pool.map(make, range(n)))
        for i, (cid, b) in enumerate(zip(ids, made, strict=True)):
            self.bundles[cid] = b
            self.index[cid] = base + i
        return ids

    def start(self, ids: list[str], workers: int = 8) -> None:
        """create + start each (runc sends the notify fd during create); records the
        time from `create` until the daemon lists the container."""
        def one(cid: str) -> None:
            t0 = time.monotonic()
            self.runtime.create(self.bundles[cid], cid)
            self.daemon.wait_container(cid, timeout=60)
            self.attach_s[cid] = time.monotonic() - t0
            self.runtime.start(cid)

        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(one, cid) for cid in ids]:
                f.result()

    def attached(self) -> set[str]:
        return {c["id"] for c in self.daemon.control("containers")["containers"]}

    def answers(self, cid: str) -> tuple[int, list[str]]:
        """(complete lines, wrong lines) of cid's output so far."""
        lines = output(self.bundles[cid])[0].splitlines()[:-1]  # the last may be cut
        want = expected(self.index[cid])
        return len(lines), [ln for ln in lines if ln != want]

    def wait_rounds(self, ids: list[str], rounds: int, timeout: float) -> list[str]:
        """Wait until each container printed `rounds` answers; the ones that did not."""
        deadline = time.monotonic() + timeout
        slow = list(ids)
        while slow and time.monotonic() < deadline:
            slow = [c for c in slow if self.answers(c)[0] < rounds]
            time.sleep(0.2)
        return slow

    def stop(self, workers: int = 8) -> None:
        def one(cid: str) -> None:
            with contextlib.suppress(Exception):
                self.runtime.delete(cid)

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, list(self.bundles)))


def rss_settled(pid: int, seconds: float = 1.0) -> int:
    """VmRSS (KiB) once it held still for `seconds` (sampled every 0.1 s), at most 5 s."""
    last, since = vm_rss_kib(pid), time.monotonic()
    deadline = since + 5
    while time.monotonic() - since < seconds and time.monotonic() < deadline:
        time.sleep(0.1)
        now = vm_rss_kib(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


def bundle_maker(top: Path, rootfs: Path) -> Callable[[BundleSpec], Bundle]:
    from .bundle import make_bundle

    counter = iter(range(1 << 30))
    return lambda spec: make_bundle(top / f"fleet-{next(counter)}", rootfs, spec)
