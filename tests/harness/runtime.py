"""Run containers with real runc / crun, each test with its own --root state
directory so it never sees another test's containers; every container this
object created is force-deleted by cleanup()."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .bundle import Bundle

RUNTIMES = ("runc", "crun")

# crun 1.8.1 `exec` right after `start` fails now and then (about 1 in 10
# here) with "setns(pid=N, CLONE_*): Operation not permitted" before it runs
# anything: it races the init's own execve of the payload. Nothing reached
# the container or the daemon, so retrying is safe; any other error is not
# retried.
_EXEC_RETRIES = 5


def _crun_exec_race(res: Result) -> bool:
    return res.rc != 0 and "setns(pid=" in res.stderr and "Operation not permitted" in res.stderr


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        assert self.rc == 0, f"rc={self.rc}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return self


class RuntimeFailure(Exception):
    pass


class Runtime:
    """One OCI runtime binary with a private state root."""

    def __init__(self, name: str, root: Path):
        binary = shutil.which(name)
        if binary is None:
            raise FileNotFoundError(name)
        self.name = name
        self.binary = binary
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._ids: set[str] = set()

    def cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def _call(self, *args: str, timeout: float = 30, check: bool = True) -> Result:
        p = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        res = Result(p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise RuntimeFailure(f"{self.name} {' '.join(args)}: rc={p.returncode}\n{p.stderr}")
        return res

    def run(self, bundle: Bundle, cid: str, timeout: float = 30) -> Result:
        """`run` in the foreground; returns the container's exit code and
        output. The container is force-deleted afterwards, even on timeout."""
        self._ids.add(cid)
        try:
            p = subprocess.run(
                self.cmd("run", "--bundle", str(bundle.path), cid),
                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
            return Result(p.returncode, p.stdout, p.stderr)
        finally:
            self.delete(cid)

    def create(self, bundle: Bundle, cid: str, timeout: float = 30) -> None:
        """`create`; the container's stdout/stderr go to files in the bundle
        (read them with output()). Call start() next."""
        self._ids.add(cid)
        with open(bundle.path / "stdout", "wb") as out, open(bundle.path / "stderr", "wb") as err:
            p = subprocess.run(
                self.cmd("create", "--bundle", str(bundle.path), cid),
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout,
            )
        if p.returncode != 0:
            raise RuntimeFailure(
                f"{self.name} create {cid}: rc={p.returncode}\n"
                + (bundle.path / "stderr").read_text(errors="replace")
            )

    def start(self, cid: str, timeout: float = 30) -> None:
        self._call("start", cid, timeout=timeout)

    def exec(self, cid: str, args: list[str], timeout: float = 30,
             env: list[str] | None = None) -> Result:
        """A process in a running container (it gets the container's seccomp
        filter, and so its own notify fd and listener connection)."""
        extra: list[str] = []
        for e in env or []:
            extra += ["--env", e]
        for _ in range(_EXEC_RETRIES):
            res = self._call("exec", *extra, cid, *args, timeout=timeout, check=False)
            if not _crun_exec_race(res):
                break
            time.sleep(0.05)
        return res

    def kill(self, cid: str, signal: str = "KILL") -> None:
        self._call("kill", cid, signal, check=False)

    def state(self, cid: str) -> dict:
        return json.loads(self._call("state", cid).stdout)

    def list(self) -> list[str]:
        out = self._call("list", "--quiet", check=False).stdout
        return [line for line in out.split() if line]

    def delete(self, cid: str) -> None:
        """Force-delete; a container that never got created is not an error."""
        self._call("delete", "--force", cid, check=False)
        self._ids.discard(cid)

    @contextlib.contextmanager
    def started(self, bundle: Bundle, cid: str) -> Iterator[str]:
        """create + start; always force-deleted on exit."""
        try:
            self.create(bundle, cid)
            self.start(cid)
            yield cid
        finally:
            self.delete(cid)

    def cleanup(self) -> list[str]:
        """Force-delete everything this runtime root still holds; returns
        what was left over (a test that leaked containers)."""
        leftover = sorted(set(self.list()) | self._ids)
        for cid in leftover:
            self.delete(cid)
        return leftover


def output(bundle: Bundle) -> tuple[str, str]:
    """stdout and stderr of a container started with create()."""
    return (
        (bundle.path / "stdout").read_text(errors="replace"),
        (bundle.path / "stderr").read_text(errors="replace"),
    )
