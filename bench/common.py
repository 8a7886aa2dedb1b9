"""Shared pieces of the benchmarks: static builds, a container environment
(reusing the test harness), and result tables."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
OUT = BENCH / "out"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.build import build_helpers  # noqa: E402
from tests.harness.bundle import Bundle, BundleSpec, make_bundle  # noqa: E402
from tests.harness.rootfs import build_rootfs  # noqa: E402
from tests.harness.runtime import Runtime  # noqa: E402

CFLAGS = ["-static", "-O2", "-Wall", "-Wextra", "-Werror"]


def build_static(name: str) -> Path:
    """bench/<name>.c -> bench/out/<name>, rebuilt when the source is newer."""
    src, exe = BENCH / f"{name}.c", OUT / name
    OUT.mkdir(exist_ok=True)
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", *CFLAGS, "-o", str(exe), str(src)], check=True)
    return exe


@dataclass
class Timing:
    """One syscall_loop run: {"nr","n","p50_ns","p99_ns","mean_ns","min_ns","ret","errno"}."""

    p50: float
    p99: float
    mean: float
    n: int
    ret: int
    errno: int

    @classmethod
    def parse(cls, stdout: str) -> Timing:
        line = [ln for ln in stdout.splitlines() if ln.startswith("{")][-1]
        d = json.loads(line)
        return cls(d["p50_ns"], d["p99_ns"], d["mean_ns"], d["n"], d["ret"], d["errno"])

    @staticmethod
    def median(runs: Sequence[Timing]) -> Timing:
        """The median of each statistic over repeated runs (a VM is noisy)."""
        return Timing(
            statistics.median(r.p50 for r in runs), statistics.median(r.p99 for r in runs),
            statistics.median(r.mean for r in runs), sum(r.n for r in runs),
            runs[-1].ret, runs[-1].errno,
        )


class ContainerEnv:
    """A session directory, a busybox rootfs with the given static binaries
    and runc with a private --root. Use as a context manager."""

    def __init__(self, binaries: dict[str, Path], runtime: str = "runc"):
        self.dir = Path(tempfile.mkdtemp(prefix="interceptd-bench-", dir="/tmp"))
        os.chmod(self.dir, 0o711)  # the container's root must traverse it
        self.rootfs = build_rootfs(self.dir / "rootfs",
                                   {**build_helpers(self.dir / "helpers"), **binaries})
        self.runtime = Runtime(runtime, self.dir / "state")
        self._n = 0

    def bundle(self, spec: BundleSpec) -> Bundle:
        self._n += 1
        return make_bundle(self.dir / f"bundle-{self._n}", self.rootfs, spec)

    def run(self, spec: BundleSpec, timeout: float = 600) -> str:
        b = self.bundle(spec)
        res = self.runtime.run(b, f"bench-{os.getpid()}-{b.path.name}", timeout=timeout)
        if res.rc != 0:
            raise RuntimeError(f"container failed rc={res.rc}:\n{res.stdout}\n{res.stderr}")
        return res.stdout

    def __enter__(self) -> ContainerEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runtime.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
