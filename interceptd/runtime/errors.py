"""The shim's own refusals and errors: printed, and written to the runtime's --log."""

from __future__ import annotations

import json
import os
import sys

from . import argv as argvmod

PROG = "interceptd-runc"


class Refused(Exception):
    """The container is refused; the message says why (raised by spec.py's rewrites and
    the checks they call, kept here so that those need not import spec.py)."""


class Fail(Exception):
    """Our own refusal/error: printed, logged for the caller, exit 1."""


def log_error(inv: argvmod.Invocation, msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    log_file_error(inv, msg)


def log_file_error(inv: argvmod.Invocation, msg: str, cwd_is_callers: bool = True) -> None:
    """The runtime's --log file: containerd shows its last error line to the user. A
    relative path names a file in the caller's cwd: the daemon's prepare service (not
    in that cwd) writes only absolute ones (containerd and Docker pass those)."""
    log = inv.global_value("log")
    if log and log.startswith("file:"):  # crun's spelling of a file
        log = log[5:]
    if not log or log.startswith(("journald:", "syslog:")):
        return
    if not cwd_is_callers and not os.path.isabs(log):
        return
    import datetime

    fmt = inv.global_value("log-format") or "text"
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    line = (json.dumps({"level": "error", "msg": f"{PROG}: {msg}", "time": now})
            if fmt == "json" else f'time="{now}" level=error msg="{PROG}: {msg}"')
    try:
        with open(log, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def refusal(inv: argvmod.Invocation) -> str:
    """The message for a command line argv.parse refused."""
    return (f"refused: {inv.reason} (interceptd-runc passes to the real runtime only "
            "commands that cannot start a container from a config, and runs nothing "
            "it cannot parse)")
