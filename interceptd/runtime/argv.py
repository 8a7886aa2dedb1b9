"""Parse a runc/crun command line and decide what interceptd-runc does with it.

Fail closed: the tables below are the whole of what the shim understands. A
command line is passed to the real runtime untouched (PASS) only when its
command cannot start a process from a config; create/run/exec/delete go
through the shim (SHIM); everything else, and anything this parser cannot
read with certainty (an unknown or abbreviated global option, a missing
value, no command, an unknown command), is refused (REFUSE) with a reason.

The same tables drive the native launcher (launcher.c): launcher.py renders
them into a C header at build time (`c_header()`), and
tests/unit/test_argv_table.py runs the built launcher's decision over many
argv shapes against `decide()` here.
"""

from __future__ import annotations

import re

PASS, SHIM, REFUSE = "pass", "shim", "refuse"

# Global options of runc 1.1.5 (urfave/cli) and crun (argp), name -> takes a value.
# Both accept `--opt value` and `--opt=value`; urfave/cli also `-opt`. A name is
# matched exactly: crun's argp would take an unambiguous prefix (`--deb`), which
# we refuse rather than guess. The arity of every name is the same in both.
GLOBAL_OPTIONS: dict[str, bool] = {
    "debug": False,
    "systemd-cgroup": False,
    "log": True,
    "log-format": True,
    "log-level": True,  # crun >= 1.9
    "root": True,
    "criu": True,  # runc
    "rootless": True,  # runc: true|false|auto; crun: VALUE
    "cgroup-manager": True,  # crun
}

# Help and version: passed through only as the one and only argument (runc and
# crun print and exit before any command runs; `--help=false create` would not).
INFO_ARGS = ("--help", "-h", "--version", "-v", "-V", "-?", "--usage")

# Every command either runtime has, and what the shim does with it. Reasons are
# shown to whoever ran the refused command (docs/runtime.md, "Fail closed").
COMMANDS: dict[str, tuple[str, str]] = {
    # The shim rewrites the bundle (create, run), clamps the process (exec),
    # undoes its host set-up (delete).
    "create": (SHIM, ""),
    "run": (SHIM, ""),
    "exec": (SHIM, ""),
    "delete": (SHIM, ""),
    # Cannot start a process from a config: they read or signal a container the
    # shim created, or print something.
    "state": (PASS, ""),
    "list": (PASS, ""),
    "ps": (PASS, ""),
    "events": (PASS, ""),
    "kill": (PASS, ""),
    "pause": (PASS, ""),
    "resume": (PASS, ""),
    "start": (PASS, ""),  # runs the process `create` already set up (through the shim)
    "features": (PASS, ""),
    "spec": (PASS, ""),  # writes a template config.json, starts nothing
    "help": (PASS, ""),
    "h": (PASS, ""),
    # cgroup limits only: no mount, namespace, capability or seccomp change.
    "update": (PASS, ""),
    # Dumps a running container to an image (CRIU); starts nothing.
    "checkpoint": (PASS, ""),
    "restore": (REFUSE, "`restore` starts a container from a checkpoint image and a "
                        "config.json that interceptd-runc has not rewritten"),
    "init": (REFUSE, "`init` is the runtime's internal command, never a caller's"),
}

# Per-command options of the SHIM commands (runc 1.1.5 and crun), name ->
# takes a value. Anything else is refused: a flag we misread could shift the
# container id or the bundle.
SUB_OPTIONS: dict[str, dict[str, bool]] = {
    "create": {
        "bundle": True, "b": True, "config": True, "f": True, "console-socket": True,
        "pid-file": True, "preserve-fds": True, "no-pivot": False, "no-new-keyring": False,
    },
    "exec": {
        "console-socket": True, "cwd": True, "env": True, "e": True, "tty": False, "t": False,
        "user": True, "u": True, "additional-gids": True, "g": True, "process": True,
        "p": True, "detach": False, "d": False, "pid-file": True, "process-label": True,
        "apparmor": True, "no-new-privs": False, "cap": True, "c": True,
        "preserve-fds": True, "cgroup": True, "ignore-paused": False,
    },
    "delete": {"force": False, "f": False},
}
SUB_OPTIONS["run"] = {**SUB_OPTIONS["create"], "detach": False, "d": False, "keep": False,
                      "no-subreaper": False}

# runc's rule for container ids (crun's is looser): a name, never a path.
_ID = re.compile(r"[A-Za-z0-9_+.-]+")


class Flag:
    # Plain classes, not dataclasses: this runs on every container start and
    # importing dataclasses costs more than the whole parse.
    __slots__ = ("name", "tokens", "value")

    def __init__(self, name: str, value: str | None, tokens: list[str]) -> None:
        self.name = name  # without dashes
        self.value = value  # None for a boolean flag
        self.tokens = tokens  # the original tokens (1 or 2)

    def __repr__(self) -> str:
        return f"Flag({self.name!r}, {self.value!r}, {self.tokens!r})"


class Invocation:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv  # the full original argument list (without argv[0])
        self.globals_: list[Flag] = []
        self.command: str | None = None
        self.command_index = -1  # index of the subcommand in argv
        self.flags: list[Flag] = []
        self.operands: list[str] = []
        self.decision = REFUSE
        self.reason = ""  # why, when refused

    def global_value(self, name: str) -> str | None:
        for f in self.globals_:
            if f.name == name:
                return f.value
        return None

    def has_global(self, name: str) -> bool:
        return _truthy(self.globals_, (name,))

    def flag_values(self, *names: str) -> list[str]:
        return [f.value for f in self.flags if f.name in names and f.value is not None]

    def has_flag(self, *names: str) -> bool:
        return _truthy(self.flags, names)

    @property
    def container_id(self) -> str | None:
        return self.operands[0] if self.operands else None


def _truthy(flags: list[Flag], names: tuple[str, ...]) -> bool:
    for f in flags:
        if f.name in names and (f.value is None or f.value.lower() not in ("false", "0")):
            return True
    return False


def _option_name(tok: str) -> str | None:
    """`--name[=v]` or `-name[=v]` -> `name[=v]`; None for any other dash count."""
    body = tok[2:] if tok.startswith("--") else tok[1:]
    if not body or body.startswith("-") or body.startswith("="):
        return None
    return body


class _Refuse(Exception):
    pass


def _take_options(args: list[str], i: int, table: dict[str, bool], what: str
                  ) -> tuple[Flag, int]:
    """The option at args[i] (a token starting with '-', not '-' or '--')."""
    tok = args[i]
    body = _option_name(tok)
    if body is None:
        raise _Refuse(f"cannot parse {what} {tok!r}")
    name, eq, value = body.partition("=")
    if name not in table:
        raise _Refuse(f"unknown {what} {tok!r}")
    if table[name] and not eq:
        if i + 1 >= len(args):
            raise _Refuse(f"{what} {tok!r} needs a value")
        return Flag(name, args[i + 1], [tok, args[i + 1]]), i + 2
    return Flag(name, value if eq else None, [tok]), i + 1


def decide(args: list[str]) -> tuple[str, str, int]:
    """(PASS|SHIM|REFUSE, reason, index of the command or -1): globals and command
    only, exactly what the launcher decides from the same tables."""
    inv = Invocation(list(args))
    return _parse_globals(inv), inv.reason, inv.command_index


def _parse_globals(inv: Invocation) -> str:
    args = inv.argv
    if not args or (len(args) == 1 and args[0] in INFO_ARGS):
        inv.decision = PASS
        return PASS
    i = 0
    try:
        while i < len(args):
            tok = args[i]
            if tok == "--":
                i += 1
                break
            if not tok.startswith("-") or tok == "-":
                break
            if tok in INFO_ARGS:
                raise _Refuse(f"{tok} is passed through only on its own")
            flag, i = _take_options(args, i, GLOBAL_OPTIONS, "global option")
            inv.globals_.append(flag)
        if i >= len(args):
            raise _Refuse("no command")
    except _Refuse as e:
        inv.reason = str(e)
        return REFUSE
    cmd = args[i]
    inv.command, inv.command_index = cmd, i
    kind, why = COMMANDS.get(cmd, (REFUSE, f"unknown command {cmd!r}"))
    inv.decision, inv.reason = kind, why
    return kind


def parse(args: list[str]) -> Invocation:
    """The whole command line: decision (and reason), globals, command, its flags
    and operands. The flags and operands of SHIM commands are checked too."""
    inv = Invocation(list(args))
    if _parse_globals(inv) != SHIM:
        return inv
    try:
        _parse_command(inv)
    except _Refuse as e:
        inv.decision, inv.reason = REFUSE, f"{inv.command}: {e}"
    return inv


def _parse_command(inv: Invocation) -> None:
    args, cmd = inv.argv, inv.command
    assert cmd is not None
    table = SUB_OPTIONS[cmd]
    j = inv.command_index + 1
    # runc (urfave/cli reorders them) takes flags after the id too, crun does not
    # (it then fails); take both so that `create ID --bundle X` is understood.
    # exec: everything after the container id is the command to run inside.
    while j < len(args):
        tok = args[j]
        if tok == "--":
            inv.operands.extend(args[j + 1:])
            break
        if tok.startswith("-") and tok != "-":
            flag, j = _take_options(args, j, table, f"{cmd} option")
            inv.flags.append(flag)
            continue
        inv.operands.append(tok)
        j += 1
        if cmd == "exec":
            inv.operands.extend(args[j:])
            break
    cid = inv.container_id
    if cid is None:
        raise _Refuse("no container id")
    if not _ID.fullmatch(cid) or cid in (".", "..") or cid.startswith("-"):
        raise _Refuse(f"invalid container id {cid!r}")
    if cmd != "exec" and len(inv.operands) != 1:
        raise _Refuse(f"expects exactly one container id, got {inv.operands!r}")


def rebuild(inv: Invocation, flags: list[Flag] | None = None) -> list[str]:
    """The argv of `inv` with its subcommand flags replaced by `flags` (order kept)."""
    out: list[str] = [t for f in inv.globals_ for t in f.tokens]
    if inv.command is None:
        return out
    out.append(inv.command)
    for f in inv.flags if flags is None else flags:
        out.extend(f.tokens)
    out.extend(inv.operands)
    return out


def with_value(flag: Flag, value: str) -> Flag:
    """The same flag spelled the same way, with another value."""
    tok = flag.tokens[0]
    if len(flag.tokens) == 2:
        return Flag(flag.name, value, [tok, value])
    return Flag(flag.name, value, [tok.split("=", 1)[0] + "=" + value])


# ------------------------------------------------------------------ the C table

_NAME = re.compile(r"[A-Za-z0-9?][A-Za-z0-9?-]*")


def c_header() -> str:
    """The tables as C, for launcher.c (#include "argv_table.h")."""
    kinds = {PASS: "CMD_PASS", SHIM: "CMD_SHIM", REFUSE: "CMD_REFUSE"}
    out = ["/* Generated from interceptd/runtime/argv.py by launcher.py: do not edit. */",
           "static const struct global_opt global_options[] = {"]
    for name, val in GLOBAL_OPTIONS.items():
        out.append(f'\t{{"{_c_name(name)}", {int(val)}}},')
    out += ["\t{NULL, 0},", "};", "static const char *const info_args[] = {"]
    out += [f'\t"{_c_name(a.lstrip("-"), a)}",' for a in INFO_ARGS]
    out += ["\tNULL,", "};", "static const struct command commands[] = {"]
    for name, (kind, _why) in COMMANDS.items():
        out.append(f'\t{{"{_c_name(name)}", {kinds[kind]}}},')
    out += ["\t{NULL, CMD_REFUSE},", "};", ""]
    return "\n".join(out)


def _c_name(name: str, whole: str | None = None) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} cannot go into the C table")
    return whole if whole is not None else name
