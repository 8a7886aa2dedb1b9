"""The receive journal (csrc/journal.c): every notification the daemon RECVs is written
to a memfd first; the memfd lives in the fd store, so after a crash or a hand-over the
successor finds the notifications that were taken off a notify fd but never answered,
and answers them (interceptd/handover.py). Layout shared with csrc/journal.c."""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from interceptd._corelib import lib

MAGIC: int = lib.ICD_JOURNAL_MAGIC  # "ICDJRNL1"
VERSION: int = lib.ICD_JOURNAL_VERSION
SLOTS = 16384  # one per (notify fd, thread) that made a notified call: room to spare
LANDING: int = lib.ICD_JOURNAL_LANDING  # slots a receiving thread has the kernel write into
DONE: int = lib.ICD_JOURNAL_DONE  # a slot's done word: acted on, | the errno answered
HEADER = struct.Struct("<QIII44x")
SLOT = struct.Struct("<IiII QII iIQ6Q")  # lock, fd, tid, done, then struct seccomp_notif
WORDS = SLOT.size // 4
assert HEADER.size == 64 and SLOT.size == 96


class Entry(NamedTuple):
    fd: int  # the notify fd's number in the daemon that received it
    id: int
    pid: int
    nr: int
    arch: int
    ip: int
    args: tuple[int, ...]
    # Acted on, not answered: the errno to answer with (0: success), None if not acted on.
    done: int | None = None


def size(slots: int = SLOTS) -> int:
    return HEADER.size + (slots + LANDING) * SLOT.size


def create(slots: int = SLOTS) -> int:
    """A new, empty journal memfd (close-on-exec)."""
    fd = os.memfd_create("interceptd-journal", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size(slots))
        os.pwrite(fd, HEADER.pack(MAGIC, VERSION, slots, LANDING), 0)
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
        magic, version, slots, landing = HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION or not slots or landing != LANDING:
            return None
        if os.fstat(fd).st_size < size(slots):
            return None
    except OSError:
        return None
    return slots


def read(fd: int) -> list[Entry]:
    """Every filled table slot and every landing slot a dead receiver left holding a
    notification (the writer must be gone or stopped); a table slot a dead writer left
    locked was torn and is skipped (its landing slot has the notification)."""
    slots = slots_of(fd)
    if slots is None:
        return []
    raw = os.pread(fd, (slots + LANDING) * SLOT.size, HEADER.size)
    words = memoryview(raw).cast("I")
    locks, tids = words[0::WORDS], words[2::WORDS]
    out = []
    for i in range(slots + LANDING):
        landing = i >= slots
        if (landing and locks[i]) or (not landing and tids[i] and not locks[i]):
            (_lock, nfd, _tid, done, nid, pid, _flags, nr, arch, ip,
             *args) = SLOT.unpack_from(raw, i * SLOT.size)
            if nid or not landing:
                out.append(Entry(nfd, nid, pid, nr, arch, ip, tuple(args),
                                 done & 0xFFFF if done & DONE else None))
    return out


def reset(fd: int) -> None:
    """Empty the journal for the next writer (after `read`)."""
    slots = slots_of(fd)
    if slots is None:
        raise ValueError("not a journal")
    os.pwrite(fd, bytes((slots + LANDING) * SLOT.size), HEADER.size)
    os.pwrite(fd, HEADER.pack(MAGIC, VERSION, slots, LANDING), 0)


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
    """Every distinct (fd, id): a thread's entries may sit in more than one slot (its
    older slot is not cleared when a probe finds it a nearer free one), so no entry is
    dropped here: the kernel (ID_VALID) says which still wait. Of one notification's
    copies, a done one wins (the landing slot's copy is never marked)."""
    best: dict[tuple[int, int], Entry] = {}
    for e in entries:
        if (e.fd, e.id) not in best or e.done is not None:
            best[(e.fd, e.id)] = e
    return sorted(best.values())
