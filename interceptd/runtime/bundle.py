"""The bundle's config.json: read as the runtime will, rewritten atomically, restored."""

from __future__ import annotations

import contextlib
import json
import os

from . import argv as argvmod
from .errors import Fail

MARKER = "io.interceptd.runtime"


def read_spec(inv: argvmod.Invocation, cwd: str) -> tuple[str, str, bytes, dict, bool]:
    """(bundle, config path, original bytes, original spec, whether it was rewritten)."""
    # As runc and crun do: chdir(bundle) (relative to the caller's cwd, through
    # symlinks), then read config.json there. realpath resolves `link/..` as
    # chdir does, which a textual normpath does not; the runtime is then given
    # this resolved path (Create.prepare), so it reads what was checked.
    bundle = os.path.realpath(os.path.join(cwd, (inv.flag_values("bundle", "b") or ["."])[-1]))
    if not os.path.isdir(bundle):
        raise Fail(f"bundle {bundle}: no such directory")
    given = inv.flag_values("config", "f")
    # crun's --config (runc has none) is taken relative to the caller's cwd, not
    # the bundle (crun realpath()s it before its chdir); config.json is the bundle's.
    path = (os.path.realpath(os.path.join(cwd, given[-1])) if given
            else os.path.join(bundle, "config.json"))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise Fail(f"{path}: no such file (not an OCI bundle?)") from None
    except OSError as e:
        raise Fail(f"cannot read {path}: {e}") from None
    spec = parse(data, path)
    rewritten = bool((spec.get("annotations") or {}).get(MARKER))
    if rewritten:
        # Already rewritten by a previous create on this bundle: start from the original.
        try:
            with open(path + ".orig", "rb") as f:
                data = f.read()
        except OSError as e:
            raise Fail(f"{path} was rewritten by interceptd but {path}.orig is gone: {e}") from None
        spec = parse(data, path + ".orig")
    return bundle, path, data, spec, rewritten


def parse(data: bytes, path: str) -> dict:
    try:
        spec = json.loads(data)
    except ValueError as e:
        raise Fail(f"{path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise Fail(f"{path} is not a JSON object")
    return spec


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.interceptd.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def keep_original(cfg_path: str, orig_bytes: bytes) -> None:
    """config.json.orig = the caller's config: a hard link when possible (the
    rewrite is then renamed over config.json), else a copy."""
    orig = cfg_path + ".orig"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(orig)
    try:
        os.link(cfg_path, orig)
    except OSError:
        write_atomic(orig, orig_bytes)


def restore_config(cfg_path: str) -> None:
    """Put the original config.json back if the current one is our rewrite."""
    orig = cfg_path + ".orig"
    try:
        with open(cfg_path, "rb") as f:
            cur = json.loads(f.read())
        if (cur.get("annotations") or {}).get(MARKER) and os.path.exists(orig):
            os.rename(orig, cfg_path)
    except (OSError, ValueError, AttributeError):
        pass
