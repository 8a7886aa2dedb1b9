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

    def prepare(self) -> list[str]:
        if self.inv.decision != argvmod.PASS:
            raise Fail(refusal(self.inv))
        return list(self.inv.argv)

    def finish(self, rc: int) -> int:
        return rc
