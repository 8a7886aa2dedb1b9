"""Running the real runtime: exec it, or run it as a child relaying signals."""

from __future__ import annotations

import os
import signal

from . import argv as argvmod
from . import settings as settingsmod

# See launcher.c: the pid of each process turned into the real runtime, or
# "py:<pid>" for this interpreter started by the launcher.
GUARD_ENV = "INTERCEPTD_RUNC_GUARD"


def spawn(cmd: list[str], executable: str, quiet: bool = False,
          timens: str | None = None, stdout: int | None = None) -> int:
    # fork+exec by hand: the subprocess module costs more to import than it saves.
    pid = os.fork()
    if pid == 0:
        try:
            if quiet:
                fd = os.open(os.devnull, os.O_RDWR)
                for n in (0, 1, 2):
                    os.dup2(fd, n)
            if stdout is not None:
                os.dup2(stdout, 1)
            exec_runtime(executable, cmd, timens)
        finally:
            os._exit(127)
    return pid


def exec_runtime(executable: str, cmd: list[str], timens: str | None = None) -> None:
    """execv the real runtime, marked (GUARD_ENV) so that a runtime that turns out
    to be interceptd-runc itself refuses instead of looping; in the time namespace
    `timens` names (timens.py) when given."""
    if timens is not None:
        from .timens import enter

        enter(timens)
    os.environ[GUARD_ENV] = str(os.getpid())
    os.execv(executable, cmd)


def wait(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status)


def run_forwarding(cmd: list[str], executable: str, timens: str | None = None) -> int:
    """Run the real runtime as a child with our fds, relaying signals; its exit status."""
    pid = spawn(cmd, executable, timens=timens)
    relayed = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
               signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
    old = {s: signal.signal(s, lambda n, _f: os.kill(pid, n)) for s in relayed}
    try:
        rc = wait(pid)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return rc if rc >= 0 else 128 - rc


def runtime_cmd(st: settingsmod.Settings, args: list[str]) -> list[str]:
    # argv[0] as a caller would spell it: crun prints it in its messages.
    return [os.path.basename(st.runtime), *args]


def _state_cmd(st: settingsmod.Settings, inv: argvmod.Invocation, cid: str) -> list[str]:
    root = inv.global_value("root")
    return runtime_cmd(st, [*(["--root", root] if root else []), "state", cid])


def container_exists(st: settingsmod.Settings, inv: argvmod.Invocation, cid: str,
                     timens: str | None = None) -> bool:
    return wait(spawn(_state_cmd(st, inv, cid), st.runtime, quiet=True, timens=timens)) == 0
