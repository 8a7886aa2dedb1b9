"""interceptd-runc: rewrite the bundle, then hand over to the real runc/crun.

The entry point and its command table; the jobs are in jobs/ (create, exec,
delete, passthrough), the helpers they share in errors, procs, bundle,
hostfacts and rewrite. The commands argv.py lists as pass-through are an execv
of the real runtime, untouched; everything else is refused (fail closed).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable

from . import argv as argvmod
from . import procs
from . import settings as settingsmod
from .errors import Fail, log_error, refusal
from .jobs.passthrough import Passthrough


def _create(inv: argvmod.Invocation, st: settingsmod.Settings):
    from .jobs.create import Create

    return Create(inv, st)


def _exec(inv: argvmod.Invocation, st: settingsmod.Settings):
    from .jobs.exec import Exec

    return Exec(inv, st)


def _delete(inv: argvmod.Invocation, st: settingsmod.Settings):
    from .jobs.delete import Delete

    return Delete(inv, st)


def _forwarded(job) -> int:
    """The runtime as a child: the job finishes (rolls back, tears down) after it."""
    args = job.prepare()
    return job.finish(procs.run_forwarding(procs.runtime_cmd(job.st, args), job.st.runtime,
                                           getattr(job, "timens", None)))


def _replaced(job) -> int:
    """The runtime in place of this process: nothing to do after it."""
    args = job.prepare()
    procs.exec_runtime(job.st.runtime, procs.runtime_cmd(job.st, args),
                       getattr(job, "timens", None))
    return 1  # not reached


# The shim's commands (argv.COMMANDS' SHIM ones): command -> (job, how the runtime
# runs). Every PASS command is the pass-through job; REFUSE never gets this far.
# Jobs are imported on use: a pass-through (state, kill) loads none of create's code.
Job = Callable[[argvmod.Invocation, settingsmod.Settings], object]
COMMANDS: dict[str, tuple[Job, Callable[..., int]]] = {
    "create": (_create, _forwarded),
    "run": (_create, _forwarded),
    "exec": (_exec, _replaced),
    "delete": (_delete, _forwarded),
}
PASSTHROUGH: tuple[Job, Callable[..., int]] = (Passthrough, _replaced)


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    trace = os.environ.get("INTERCEPTD_RUNC_TRACE")
    if trace:  # debugging aid: what did the caller (containerd, docker) really run?
        with contextlib.suppress(OSError), open(trace, "a") as f:
            f.write(json.dumps({"argv": args, "cwd": os.getcwd(), "pid": os.getpid()}) + "\n")
    inv = argvmod.parse(args)
    if os.environ.get(procs.GUARD_ENV) == str(os.getpid()):
        log_error(inv, "refusing to run as its own real runtime (the real runtime "
                       "resolves to interceptd-runc; set [runtime] runtime to the path "
                       "of runc or crun)")
        return 1
    if inv.decision == argvmod.REFUSE:
        log_error(inv, refusal(inv))
        return 1
    try:
        st = settingsmod.load()
    except settingsmod.SettingsError as e:
        log_error(inv, str(e))
        return 1
    make, run = COMMANDS.get(inv.command or "", PASSTHROUGH)
    try:
        return run(make(inv, st))
    except Fail as e:
        log_error(inv, str(e))
        return 1
    except OSError as e:
        log_error(inv, f"cannot run {st.runtime}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
