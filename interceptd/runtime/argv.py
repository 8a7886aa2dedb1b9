"""Parse a runc/crun command line just enough to find the subcommand and its operands.

Unknown flags are kept verbatim: the real runtime owns the error message for them.
"""

from __future__ import annotations

# Global flags that take a value (runc and crun); every other global flag is boolean.
GLOBAL_VALUE_FLAGS = {"root", "log", "log-format", "criu", "rootless", "cgroup-manager"}

# Per-subcommand flags that take a value; anything else is boolean.
SUB_VALUE_FLAGS = {
    "create": {"bundle", "b", "console-socket", "pid-file", "preserve-fds", "config", "f"},
    "run": {"bundle", "b", "console-socket", "pid-file", "preserve-fds", "config", "f"},
    "exec": {
        "console-socket", "cwd", "env", "e", "user", "u", "additional-gids", "g",
        "process", "p", "pid-file", "process-label", "apparmor", "cap", "c",
        "preserve-fds", "cgroup",
    },
    "delete": set(),
}


# Plain classes, not dataclasses: this runs on every container start and
# importing dataclasses costs more than the whole parse.
class Flag:
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

    def global_value(self, name: str) -> str | None:
        for f in self.globals_:
            if f.name == name:
                return f.value
        return None

    def has_global(self, name: str) -> bool:
        for f in self.globals_:
            if f.name == name and (f.value is None or f.value.lower() not in ("false", "0")):
                return True
        return False

    def flag_values(self, *names: str) -> list[str]:
        return [f.value for f in self.flags if f.name in names and f.value is not None]

    def has_flag(self, *names: str) -> bool:
        for f in self.flags:
            if f.name in names and (f.value is None or f.value.lower() not in ("false", "0")):
                return True
        return False

    @property
    def container_id(self) -> str | None:
        return self.operands[0] if self.operands else None


def _split_flag(tok: str) -> tuple[str, str | None]:
    name = tok.lstrip("-")
    if "=" in name:
        name, val = name.split("=", 1)
        return name, val
    return name, None


def _take_flags(args: list[str], start: int, value_flags: set[str]) -> tuple[list[Flag], int]:
    """Consume flags from args[start:], urfave/cli style; stop at the first operand or '--'."""
    flags: list[Flag] = []
    i = start
    while i < len(args):
        tok = args[i]
        if tok == "--" or not tok.startswith("-") or tok == "-":
            break
        name, val = _split_flag(tok)
        if val is None and name in value_flags and i + 1 < len(args):
            flags.append(Flag(name, args[i + 1], [tok, args[i + 1]]))
            i += 2
            continue
        flags.append(Flag(name, val, [tok]))
        i += 1
    return flags, i


def parse(args: list[str]) -> Invocation:
    inv = Invocation(argv=list(args))
    inv.globals_, i = _take_flags(args, 0, GLOBAL_VALUE_FLAGS)
    if i >= len(args):
        return inv
    if args[i] == "--":
        i += 1
        if i >= len(args):
            return inv
    inv.command = args[i]
    inv.command_index = i
    value_flags = SUB_VALUE_FLAGS.get(inv.command, set())
    j = i + 1
    # urfave/cli (runc) stops at the first operand; crun (argp) allows flags after it.
    # Collect both so that `create ID --bundle X` is understood too.
    while j < len(args):
        flags, j = _take_flags(args, j, value_flags)
        inv.flags.extend(flags)
        if j >= len(args):
            break
        if args[j] == "--":
            inv.operands.extend(args[j + 1 :])
            break
        inv.operands.append(args[j])
        j += 1
        if inv.command == "exec" and inv.operands:
            # Everything after the container id is the command to run inside.
            inv.operands.extend(args[j:])
            break
    return inv


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
