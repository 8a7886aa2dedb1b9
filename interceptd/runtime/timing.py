"""Per-phase timing of a job, for bench_start's breakdown: with INTERCEPTD_RUNC_TIMING
set (in the environment of the process doing the job: the daemon, for the prepare
service) to a file, each job appends one JSON line {"cid", "command", phase: ms, ...}.
Unset, a mark is one attribute test."""

from __future__ import annotations

import json
import os
import time

ENV = "INTERCEPTD_RUNC_TIMING"


class Phases:
    __slots__ = ("_last", "marks", "path")

    def __init__(self) -> None:
        self.path = os.environ.get(ENV) or None
        self.marks: dict[str, float] | None = {} if self.path else None
        self._last = time.perf_counter() if self.path else 0.0

    def mark(self, name: str) -> None:
        """The time since the previous mark (or the start) is phase `name`'s."""
        if self.marks is None:
            return
        now = time.perf_counter()
        self.marks[name] = self.marks.get(name, 0.0) + (now - self._last) * 1000
        self._last = now

    def write(self, **fields: str) -> None:
        if self.marks is None or self.path is None:
            return
        line = json.dumps({**fields, **{k: round(v, 3) for k, v in self.marks.items()}})
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
        except OSError:
            return
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
