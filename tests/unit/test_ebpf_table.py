"""The eBPF layer's table of tracked cgroup ids (open addressing, linear probing,
left buckets), driven through BpfLayer.track/untrack against a model of the
program's search (bpf/syscalls.bpf.c tracked_slot): no kernel needed."""

from __future__ import annotations

import random
import struct

import pytest

from interceptd import ebpf


def search(table: dict[int, tuple[int, int]], cg: int) -> int | None:
    """What tracked_slot() finds for `cg`: its slot, or None."""
    for k in range(ebpf.TRACK_PROBES):
        got = table.get((cg + k) % ebpf.TRACK_BUCKETS, (0, 0))
        if got[0] == 0:
            return None
        if got[0] == cg:
            return got[1]
    return None


@pytest.fixture
def layer(monkeypatch):
    bpf_map: dict[int, tuple[int, int]] = {}
    writes: list[tuple[int, int, int]] = []

    def update(fd: int, key: bytes, value: bytes) -> None:
        (bucket,) = struct.unpack("<I", key)
        cg, slot, _ = ebpf.TRACK.unpack(value)
        bpf_map[bucket] = (cg, slot)
        writes.append((bucket, cg, slot))

    monkeypatch.setattr(ebpf, "map_update", update)
    monkeypatch.setattr(ebpf, "cgroup2_id", lambda _mount, path: int(path.strip("/")))
    lay = ebpf.BpfLayer(None, sensitive=[], cgroup2_mount="/unused")
    lay.up = True
    lay._maps = {"tracked": -1}
    size = ebpf.MAX_TRACKED * ebpf.NR_SLOTS
    lay._calls = memoryview(bytearray(size * 8)).cast("Q")
    lay._errors = memoryview(bytearray(size * 8)).cast("Q")
    return lay, bpf_map, writes


def test_colliding_ids_found_and_left_buckets_freed(layer):
    lay, bpf_map, _ = layer
    n = ebpf.TRACK_BUCKETS
    ids = [100, 100 + n, 100 + 2 * n, 101]  # the same first bucket, then its neighbour
    for cg in ids:
        lay.track(f"c{cg}", f"/{cg}")
    assert {cg: search(bpf_map, cg) for cg in ids} == {
        cg: lay._by_cid[f"c{cg}"].slot for cg in ids}
    lay.untrack(f"c{100 + n}")  # in the middle of a probe path: left, not freed
    assert search(bpf_map, 100 + 2 * n) == lay._by_cid[f"c{100 + 2 * n}"].slot
    assert search(bpf_map, 100 + n) is None
    for cg in (100, 100 + 2 * n, 101):
        lay.untrack(f"c{cg}")
    assert all(cg == 0 for cg, _ in bpf_map.values())  # every left bucket freed again
    assert lay._table == {}


def test_a_bucket_gets_its_slot_before_its_id(layer):
    lay, _, writes = layer
    lay.track("a", "/7")
    assert [(b, cg) for b, cg, _ in writes] == [(7, ebpf.TRACK_TOMB), (7, 7)]
    assert writes[0][2] == writes[1][2] == lay._by_cid["a"].slot


def test_random_churn_keeps_every_live_id_found(layer):
    lay, bpf_map, _ = layer
    rnd = random.Random(11)
    live: dict[str, int] = {}
    for step in range(3000):
        if live and (len(live) > 200 or rnd.random() < 0.45):
            cid = rnd.choice(sorted(live))
            lay.untrack(cid)
            assert search(bpf_map, live.pop(cid)) is None
        else:
            cg = rnd.choice((rnd.randrange(1, 50), rnd.randrange(1, 1 << 20)))
            cg = cg * ebpf.TRACK_BUCKETS + rnd.randrange(8)  # crowd a few buckets
            if cg in live.values():
                continue
            lay.track(f"s{step}", f"/{cg}")
            if f"s{step}" in lay._by_cid:
                live[f"s{step}"] = cg
        for cid, cg in live.items():
            assert search(bpf_map, cg) == lay._by_cid[cid].slot
    for cid in list(live):
        lay.untrack(cid)
    assert all(cg == 0 for cg, _ in bpf_map.values())
