"""adjtimex(2), clock_adjtime(2): read-only queries performed on the daemon's copy, every
clock change refused (the clocks are kernel-global)."""

from __future__ import annotations

import errno
import struct

from interceptd.handlers import scope
from interceptd.kernel.consts import TIMEX_SIZE
from interceptd.kernel.targetmem import call_adjtimex, write_target
from interceptd.seams import Request
from interceptd.verdict import Verdict


def _adjtimex(req: Request, clockid: int | None, addr: int) -> Verdict:
    raw = bytearray(req.read(addr, TIMEX_SIZE))
    modes = struct.unpack_from("<I", raw, 0)[0]
    what = "adjtimex" if clockid is None else f"clock_adjtime(clock={clockid})"
    if modes != 0:
        return Verdict.errno(errno.EPERM, f"{what}: setting a clock is kernel-global "
                                          f"[modes={modes:#x}]")
    if clockid is not None and clockid < 0:
        return Verdict.errno(errno.EPERM, f"{what}: dynamic (device) clocks refused")
    # Performed on our own copy with modes 0 (read-only); the result goes back to the
    # caller's buffer: the kernel would have written the same bytes there.
    try:
        state = call_adjtimex(raw, clockid)
    except OSError as e:
        return Verdict.errno(e.errno or errno.EINVAL, f"{what}: {e.strerror}")
    err = write_target(req.pid, addr, bytes(raw), req.valid)
    if err:
        return Verdict.errno(err, f"{what}: bad buffer")
    return Verdict.value(state, f"{what}: read-only query performed")


def handle_adjtimex(req: Request) -> Verdict:
    return _adjtimex(req, None, req.args[0])


def handle_clock_adjtime(req: Request) -> Verdict:
    return _adjtimex(req, scope.s32(req.args[0]), req.args[1])
