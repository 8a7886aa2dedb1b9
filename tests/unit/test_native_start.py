"""The native helper's start (handlers/mount.py): once per container, whether the attach
hook or the first call gets there first, and the mount rules end as ACT_NATIVE either way
(never the hook's ACT_HOLD/ACT_PYTHON over a start the first call already made)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import fakecore

from interceptd.handlers import mount


def _container(cid: str) -> SimpleNamespace:
    return SimpleNamespace(id=cid, channel=fakecore.FakeChannel(1), notify_fds=[7], pidfd=5,
                           init_pid=1234)


def _state() -> SimpleNamespace:
    return SimpleNamespace(native=False)


def test_first_call_then_hook_keeps_native_rules() -> None:
    ct, st = _container("a"), _state()
    mount.start_native(ct, fakecore, st)  # the first call won the race
    assert ct.channel.native[2] == 1234
    mount.start_native(ct, fakecore, None, lambda: st)  # the attach hook, late
    assert ct.channel.rules[mount.NR_MOUNT][0] == fakecore.ACT_NATIVE
    assert ct.channel.rules[mount.NR_UMOUNT2][0] == fakecore.ACT_NATIVE


def test_hook_holds_then_turns_native_rules_on() -> None:
    ct, st = _container("b"), _state()
    seen: list[int] = []

    def snapshot() -> SimpleNamespace:
        seen.append(ct.channel.rules[mount.NR_MOUNT][0])  # while the snapshot is taken
        return st

    mount.start_native(ct, fakecore, None, snapshot)
    assert seen == [fakecore.ACT_HOLD]
    assert ct.channel.rules[mount.NR_MOUNT][0] == fakecore.ACT_NATIVE and st.native
    mount.start_native(ct, fakecore, st)  # a first call after it: nothing more
    assert ct.channel.rules[mount.NR_UMOUNT2][0] == fakecore.ACT_NATIVE


def test_no_snapshot_puts_the_python_path_back() -> None:
    ct = _container("c")
    mount.start_native(ct, fakecore, None, lambda: None)
    assert ct.channel.rules[mount.NR_MOUNT][0] == fakecore.ACT_PYTHON
    assert ct.channel.rules[mount.NR_UMOUNT2][0] == fakecore.ACT_PYTHON


def test_one_helper_when_both_race() -> None:
    ct, st = _container("d"), _state()
    starts: list[int] = []
    orig = ct.channel.enable_native

    def counting(*a: object) -> None:
        starts.append(1)
        orig(*a)

    ct.channel.enable_native = counting
    ts = [threading.Thread(target=mount.start_native, args=(ct, fakecore, st)),
          threading.Thread(target=mount.start_native, args=(ct, fakecore, None, lambda: st))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert starts == [1]
    assert ct.channel.rules[mount.NR_MOUNT][0] == fakecore.ACT_NATIVE
