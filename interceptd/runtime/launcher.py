"""Build the native interceptd-runc launcher (launcher.c) and install it.

    python -m interceptd.runtime.launcher OUT   # e.g. .venv/bin/interceptd-runc

builds the createContainer hook beside this module too (`HOOK`, from sysctlhook.c).

The launcher execs the real runtime for pass-through subcommands and this
interpreter (isolated, no site) for create/run/exec/delete and for refusals.
Its command and option tables are argv.py's, rendered into argv_table.h here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile


def build(out: str, python: str | None = None, cc: str = "gcc",
          decide_only: bool = False, pkgroot: str | None = None) -> str:
    """Compile the launcher into out. decide_only: a variant that prints its
    decision (pass, shim, refuse) for its argv and exits, for the parity test.
    pkgroot: where the installed package lives (a .deb's), default this tree's."""
    from .argv import c_header

    here = os.path.dirname(os.path.abspath(__file__))
    pkgroot = pkgroot or os.path.dirname(os.path.dirname(here))
    python = python or sys.executable
    for s in (python, pkgroot):
        if any(c in s for c in "'\"\\\n"):
            raise ValueError(f"path {s!r} cannot be embedded in the launcher")
    incdir = tempfile.mkdtemp(prefix="interceptd-launcher-")
    try:
        with open(os.path.join(incdir, "argv_table.h"), "w") as f:
            f.write(c_header())
        return _compile(out, ["-I", incdir,
                              f'-DINTERCEPTD_PYTHON="{python}"',
                              f'-DINTERCEPTD_PKGROOT="{pkgroot}"',
                              *(["-DINTERCEPTD_DECIDE_ONLY"] if decide_only else []),
                              os.path.join(here, "launcher.c")], cc)
    finally:
        shutil.rmtree(incdir, ignore_errors=True)


HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interceptd-sysctl-hook")


def build_hook(out: str = HOOK, cc: str = "gcc") -> str:
    """Compile the createContainer hook that binds the served /proc/sys values
    (sysctlhook.c; emulbinds.py adds it to config.json)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return _compile(out, [os.path.join(here, "sysctlhook.c")], cc)


def _compile(out: str, args: list[str], cc: str) -> str:
    out = os.path.abspath(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", dir=os.path.dirname(out))
    os.close(fd)
    try:
        cmd = [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", tmp, *args]
        # Static where libc.a is installed: it runs for every runtime call, and
        # a static binary skips the dynamic loader (~0.5 ms per call here).
        if subprocess.run([*cmd, "-static"], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(cmd, check=True)
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(build(sys.argv[1]))
    print(build_hook())
    return 0


if __name__ == "__main__":
    sys.exit(main())
