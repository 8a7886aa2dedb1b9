"""The restart pieces without containers: fd store messages, LISTEN_FDS parsing, the
journal's layout, hand-over records and their checks (docs/operations.md, "Restarts")."""

from __future__ import annotations

import array
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from interceptd import fdstore, journal
from interceptd.handover import Handover, Record, container_key, start_ticks
from interceptd.ocistate import ContainerState, ProcessState
from interceptd.sdnotify import Notifier


@pytest.fixture
def manager() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket."""
    name = f"@interceptd-unit-{uuid.uuid4().hex[:10]}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name[1:])
    s.settimeout(2)
    yield s, name
    s.close()


def _recv(s: socket.socket) -> tuple[dict[str, str], list[int]]:
    data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    fds: list[int] = []
    for _level, _typ, payload in anc:
        a = array.array("i")
        a.frombytes(payload)
        fds.extend(a)
    return dict(ln.split("=", 1) for ln in data.decode().splitlines()), fds


def test_fd_names() -> None:
    assert fdstore.valid_name("nfy-0123456789abcdef-12")
    for bad in ("", "a:b", "a b", "é", "x" * 256, "a\n"):
        assert not fdstore.valid_name(bad)


def test_store_add_and_remove(manager: tuple[socket.socket, str]) -> None:
    sock, name = manager
    store = fdstore.FdStore(Notifier({"NOTIFY_SOCKET": name}))
    r, w = os.pipe()
    try:
        store.add("listener", r)
        msg, fds = _recv(sock)
        assert msg == {"FDSTORE": "1", "FDNAME": "listener"} and len(fds) == 1
        assert os.path.samestat(os.fstat(fds[0]), os.fstat(r))
        os.close(fds[0])
        ours = dict(store.items())["listener"]
        assert ours != r and os.path.samestat(os.fstat(ours), os.fstat(r))
        with pytest.raises(ValueError):
            store.add("a:b", r)
        store.remove("listener")
        assert _recv(sock) == ({"FDSTOREREMOVE": "1", "FDNAME": "listener"}, [])
        assert "listener" not in store
        with pytest.raises(OSError):
            os.fstat(ours)
    finally:
        os.close(r)
        os.close(w)


def test_store_prune_drops_hung_up() -> None:
    store = fdstore.FdStore(Notifier({}))
    r, w = os.pipe()
    r2, w2 = os.pipe()
    store.add("nfy-k-1", r)
    store.add("nfy-k-2", r2)
    os.close(r)
    os.close(w)  # no writer left: the stored read end polls POLLHUP
    os.close(r2)
    assert store.prune("nfy-k-") == ["nfy-k-1"]
    assert "nfy-k-2" in store and "nfy-k-1" not in store
    store.remove("nfy-k-2")
    os.close(w2)


def test_listen_fds(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    base = 900
    os.dup2(r, base)
    os.dup2(w, base + 1)
    monkeypatch.setattr(fdstore, "SD_LISTEN_FDS_START", base)
    try:
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2",
               "LISTEN_FDNAMES": "journal:"}
        assert fdstore.listen_fds(env) == [("journal", base), ("unknown", base + 1)]
        assert not os.get_inheritable(base)
        assert fdstore.listen_fds({**env, "LISTEN_PID": "1"}) == []  # not ours
        assert fdstore.listen_fds({**env, "LISTEN_FDS": "x"}) == []
    finally:
        for fd in (r, w, base, base + 1):
            os.close(fd)


def test_journal_layout_and_reset() -> None:
    fd = journal.create(slots=8)
    try:
        assert journal.slots_of(fd) == 8 and journal.read(fd) == []
        args = (1, 2, 3, 4, 5, 6)
        slot = journal.SLOT.pack(0, 41, 77, 0, 0xDEAD, 77, 0, 139, 0xC000003E, 0x1234, *args)
        torn = journal.SLOT.pack(1, 41, 78, 0, 0xBEEF, 78, 0, 139, 0xC000003E, 0, *args)
        os.pwrite(fd, slot, journal.HEADER.size + 3 * journal.SLOT.size)
        os.pwrite(fd, torn, journal.HEADER.size + 5 * journal.SLOT.size)
        (e,) = journal.read(fd)  # the locked (torn) slot is skipped
        assert e == journal.Entry(41, 0xDEAD, 77, 139, 0xC000003E, 0x1234, args)
        # A landing slot left locked by a receiver killed as its RECV returned.
        landed = journal.SLOT.pack(1, 42, 0, 0, 0xF00D, 99, 0, 163, 0xC000003E, 0, *args)
        empty = journal.SLOT.pack(1, 43, 0, 0, 0, 0, 0, 0, 0, 0, *(0,) * 6)
        base = journal.HEADER.size + 8 * journal.SLOT.size
        os.pwrite(fd, landed, base + 7 * journal.SLOT.size)
        os.pwrite(fd, empty, base + 9 * journal.SLOT.size)  # died blocked: nothing
        assert [x.id for x in journal.read(fd)] == [0xDEAD, 0xF00D]
        journal.reset(fd)
        assert journal.read(fd) == [] and journal.slots_of(fd) == 8
    finally:
        os.close(fd)
    r, w = os.pipe()
    assert journal.slots_of(r) is None
    os.close(r)
    os.close(w)


def _state(cid: str, pid: int, status: str = "created") -> ProcessState:
    return ProcessState("1.0.2", ["seccompFd"], pid, "",
                        ContainerState("1.0.2", cid, status, pid, "/b", {"k": "v"}))


def test_wrap_stores_fd_and_record_first(tmp_path: Path) -> None:
    ho = Handover(str(tmp_path), Notifier({}))
    seen: list[tuple[str, int, list[str]]] = []
    r, w = os.pipe()

    def on_message(st: ProcessState, fd: int) -> None:
        rec = json.loads((tmp_path / "handover" / f"{container_key(st.state.id)}.json")
                         .read_text())
        seen.append((st.state.id, fd, list(rec["fds"])))

    ho.wrap(on_message)(_state("c1", os.getpid()), r)
    (cid, fd, names), = seen
    assert cid == "c1" and fd == r and len(names) == 1 and names[0] in ho.store
    rec = Record.from_dict(json.loads((tmp_path / "handover" /
                                       f"{container_key('c1')}.json").read_text()))
    assert rec.init_start == start_ticks(os.getpid()) and rec.fds[names[0]]["fdno"] == r
    ho.untrack("c1")  # released: out of the store, record gone
    assert names[0] not in ho.store and not list((tmp_path / "handover").iterdir())
    os.close(r)
    os.close(w)


def test_refused_attach_leaves_nothing(tmp_path: Path) -> None:
    ho = Handover(str(tmp_path), Notifier({}))
    r, w = os.pipe()

    def refuse(st: ProcessState, fd: int) -> None:
        raise OSError("no")

    with pytest.raises(OSError):
        ho.wrap(refuse)(_state("c2", os.getpid()), r)
    assert len(ho.store) == 0 and not list((tmp_path / "handover").iterdir())
    os.close(r)
    os.close(w)


def test_adopt_discards_what_does_not_match(tmp_path: Path,
                                            manager: tuple[socket.socket, str]) -> None:
    sock, name = manager
    d = tmp_path / "handover"
    d.mkdir()
    dead = Record("k1", "gone", "/b", {}, "1.0.2", 2**22, 12345,
                  {"nfy-k1-1": {"pid": 1, "fdno": 40}})
    alive = Record("k2", "not-seccomp", "/b", {}, "1.0.2", os.getpid(),
                   start_ticks(os.getpid()), {"nfy-k2-1": {"pid": 1, "fdno": 41}})
    for rec in (dead, alive):
        (d / f"{rec.key}.json").write_text(json.dumps(rec.__dict__))
    (d / "junk.json").write_text("{not json")
    ho = Handover(str(tmp_path), Notifier({"NOTIFY_SOCKET": name}))
    pipes = [os.pipe() for _ in range(3)]
    ho.take([("nfy-k1-1", pipes[0][0]), ("nfy-k2-1", pipes[1][0]),
             ("nfy-orphan-1", pipes[2][0])])
    called: list[str] = []
    a = ho.adopt(lambda st, fd: called.append(st.state.id))
    assert called == [] and a.containers == 0
    reasons = " | ".join(a.discarded)
    assert "gone: init" in reasons and "not-seccomp: no live notify fd" in reasons
    assert "nfy-orphan-1: no record" in reasons
    assert not list(d.iterdir())  # every record removed, the junk one too
    removed = {_recv(sock)[0]["FDNAME"] for _ in range(3)}
    assert removed == {"nfy-k1-1", "nfy-k2-1", "nfy-orphan-1"}  # FDSTOREREMOVE each
    for _r, w in pipes:  # the read ends were closed by adopt: the write ends see EPIPE
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
        os.close(w)


def test_journal_done_word() -> None:
    """A slot acted on (native helper: the mount done, its answer not sent) carries the
    errno to answer with; of one notification's copies the done one wins."""
    fd = journal.create(slots=8)
    try:
        args = (1, 2, 3, 4, 5, 6)
        acted = journal.SLOT.pack(0, 41, 77, journal.DONE | 22, 0xDEAD, 77, 0, 166,
                                  0xC000003E, 0, *args)
        ok = journal.SLOT.pack(0, 41, 78, journal.DONE, 0xBEEF, 78, 0, 165, 0xC000003E, 0,
                               *args)
        plain = journal.SLOT.pack(0, 41, 77, 0, 0xDEAD, 77, 0, 166, 0xC000003E, 0, *args)
        for i, s in enumerate((plain, acted, ok)):
            os.pwrite(fd, s, journal.HEADER.size + i * journal.SLOT.size)
        got = journal.unanswered_candidates(journal.read(fd))
        assert [(e.id, e.done) for e in got] == [(0xBEEF, 0), (0xDEAD, 22)]
    finally:
        os.close(fd)
