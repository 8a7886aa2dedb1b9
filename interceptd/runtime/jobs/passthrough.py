"""The commands argv.py lists as pass-through (state, kill, start, ...): the real
runtime with the caller's arguments, untouched. Anything else never gets here:
argv.parse refuses it (fail closed)."""

from __future__ import annotations

from .. import argv as argvmod
from .. import settings as settingsmod
from ..errors import Fail, refusal


class Passthrough:
    def __init__(self, inv: argvmod.Invocation, st: settingsmod.Settings,
                 cwd: str | None = None) -> None:
        self.inv = inv
        self.st = st
        # The named container's time namespace, which the runtime reads its state in.
        self.timens: str | None = None

    def prepare(self) -> list[str]:
        from .. import timens

        if self.inv.decision != argvmod.PASS:
            raise Fail(refusal(self.inv))
        # As launcher.c: the first operand with a pinned namespace (options' values
        # are operands to argv.parse for these commands).
        for op in self.inv.operands:
            self.timens = timens.for_command(self.st, self.inv.global_value("root"), op)
            if self.timens:
                break
        return list(self.inv.argv)

    def finish(self, rc: int) -> int:
        return rc
