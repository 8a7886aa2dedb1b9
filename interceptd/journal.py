"""The receive journal (csrc/journal.c): every notification the daemon RECVs is written
to a memfd first; the memfd lives in the fd store, so after a crash or a hand-over the
successor finds the notifications that were taken off a notify fd but never answered,
and answers them (interceptd/handover.py). Layout shared with csrc/journal.c."""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

MAGIC = 0x314C4E524A444349  # "ICDJRNL1"
VERSION = 1
SLOTS = 16384  # a ring: more than every container's in-flight calls together
HEADER = struct.Struct("<QIIQ40x")
SLOT = struct.Struct("<QiIQII iIQ6Q")  # seq, fd, pad, then struct seccomp_notif
assert HEADER.size == 64 and SLOT.size == 96


class Entry(NamedTuple):
    seq: int
    fd: int  # the notify fd's number in the daemon that received it
    id: int
    pid: int
    nr: int
    arch: int
    ip: int
    args: tuple[int, ...]


def size(slots: int = SLOTS) -> int:
    return HEADER.size + slots * SLOT.size


def create(slots: int = SLOTS) -> int:
    """A new, empty journal memfd (close-on-exec)."""
    fd = os.memfd_create("interceptd-journal", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size(slots))
        os.pwrite(fd, HEADER.pack(MAGIC, VERSION, slots, 0), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def slots_of(fd: int) -> int | None:
    """The slot count of a journal memfd, None if `fd` is not one."""
    try:
        raw = os.pread(fd, HEADER.size, 0)
        if len(raw) != HEADER.size:
            return None
        magic, version, slots, _next = HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION or not slots:
            return None
        if os.fstat(fd).st_size < size(slots):
            return None
    except OSError:
        return None
    return slots


def read(fd: int) -> list[Entry]:
    """Every published entry, oldest first (the writer must be gone or stopped)."""
    slots = slots_of(fd)
    if slots is None:
        return []
    raw = os.pread(fd, slots * SLOT.size, HEADER.size)
    out = []
    for (seq, nfd, _pad, nid, pid, _flags, nr, arch, ip, *args) in SLOT.iter_unpack(raw):
        if seq:
            out.append(Entry(seq, nfd, nid, pid, nr, arch, ip, tuple(args)))
    out.sort()
    return out


def reset(fd: int) -> None:
    """Empty the journal for the next writer (after `read`)."""
    slots = slots_of(fd)
    if slots is None:
        raise ValueError("not a journal")
    os.pwrite(fd, bytes(slots * SLOT.size), HEADER.size)
    os.pwrite(fd, HEADER.pack(MAGIC, VERSION, slots, 0), 0)


def open_in_core(fd: int) -> None:
    """From now on the engine writes every RECV'd notification to this journal."""
    from interceptd._core import lib

    slots = slots_of(fd)
    if slots is None:
        raise ValueError("not a journal")
    ret = lib.icd_journal_open(fd, slots)
    if ret < 0:
        raise OSError(-ret, f"icd_journal_open: {os.strerror(-ret)}")


def unanswered_candidates(entries: list[Entry]) -> list[Entry]:
    """The newest entry per (fd, pid): a task waits on one notification at a time, so
    only that one can still be unanswered (the kernel's ID_VALID says whether it is)."""
    last: dict[tuple[int, int], Entry] = {}
    for e in entries:
        last[(e.fd, e.pid)] = e
    return sorted(last.values())
