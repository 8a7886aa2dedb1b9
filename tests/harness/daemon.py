"""The real interceptd as a subprocess in its own state directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INTERCEPTD = REPO / ".venv" / "bin" / "interceptd"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def render_config(rules: list[dict[str, Any]] | None = None,
                  sections: dict[str, dict[str, Any]] | None = None,
                  extra: str = "") -> str:
    """TOML text: [section] tables, then one [[rules]] table per rule, then extra."""
    out: list[str] = []
    for name, table in (sections or {}).items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        out.append("")
    for rule in rules or []:
        out.append("[[rules]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in rule.items()]
        out.append("")
    out.append(extra)
    return "\n".join(out)


class Daemon:
    """start() runs interceptd and waits for its sockets; stop() sends SIGTERM
    to that pid only and returns the exit code."""

    def __init__(self, state_dir: Path, config_text: str = "",
                 args: list[str] | None = None, env: dict[str, str] | None = None,
                 log_level: str = "debug"):
        self.state_dir = state_dir
        self.config_path = state_dir.parent / f"{state_dir.name}.toml"
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        self.config_text = config_text
        self.args = list(args or [])
        self.env = env
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def seccomp_sock(self) -> Path:
        return self.state_dir / "seccomp.sock"

    @property
    def control_sock(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def listener_path(self) -> str:
        return str(self.seccomp_sock)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20) -> Daemon:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        # The repository root on the path: test handler modules live in tests/.
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath, **(self.env or {}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(INTERCEPTD), "--state-dir", str(self.state_dir),
                 "--metrics-address", "off", "--config", str(self.config_path),
                 "--log-level", self.log_level, *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + timeout
        # "ready" is logged once every part is up (the runtime's prepare service binds
        # runtime.sock after the two sockets): tests that count the daemon's fds
        # must not take their baseline before it.
        while not (self.seccomp_sock.exists() and self.control_sock.exists()
                   and self._ready_logged()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"interceptd exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"interceptd did not create its sockets:\n{self.log()}")
            time.sleep(0.02)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _ready_logged(self) -> bool:
        text = self.log()
        return " ready " in text or '"msg": "ready"' in text or '"msg":"ready"' in text

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def control(self, cmd: str, timeout: float = 10, **kwargs: Any) -> dict[str, Any]:
        """One request on control.sock; returns the first response line."""
        return self.control_lines(cmd, timeout=timeout, count=1, **kwargs)[0]

    def control_lines(self, cmd: str, timeout: float = 10, count: int = 1,
                      **kwargs: Any) -> list[dict[str, Any]]:
        """Up to count response lines (fewer if the daemon closes first)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.control_sock))
            s.sendall(json.dumps({"cmd": cmd, **kwargs}).encode() + b"\n")
            f = s.makefile("rb")
            lines = []
            while len(lines) < count:
                line = f.readline()
                if not line:
                    break
                lines.append(json.loads(line))
            return lines

    def container(self, cid: str) -> dict[str, Any] | None:
        """The daemon's record of container cid (`containers` on control.sock)."""
        found = [c for c in self.control("containers")["containers"] if c["id"] == cid]
        return found[0] if found else None

    def wait_container(self, cid: str, timeout: float = 10) -> dict[str, Any]:
        """Wait until the daemon has attached cid. Needed after crun `start`
        (crun's init installs its filter and sends the fd only at start, and
        `crun start` returns before the daemon has taken it) and harmless
        after runc (which sends it during `create`)."""
        deadline = time.monotonic() + timeout
        while (c := self.container(cid)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {cid} never attached:\n{self.log()}")
            time.sleep(0.01)
        return c

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fds(self) -> dict[int, str]:
        out = {}
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                out[int(name)] = os.readlink(f"/proc/{self.pid}/fd/{name}")
        return out

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not exit. None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -signal.SIGKILL
        return self.proc.returncode
