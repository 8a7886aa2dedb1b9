"""The decision pump files the C paths' handling times (receive to send, measured in C)
into the fast and native histograms; a record without times adds nothing."""

from __future__ import annotations

from dataclasses import dataclass

from interceptd import seams
from interceptd.events import Counters, EventBus
from interceptd.pump import DecisionPump
from interceptd.tally import DURATION_BUCKETS_NS, CallTally


@dataclass
class Rec:
    nr: int
    action: int
    handling_ns: int
    reason: str = ""
    cookie: int = 1
    pid: int = 42
    value: int = 0
    ns_time: int = 0
    comm: str = "x"
    send_errno: int = 0
    args: tuple[int, ...] = ()


def _pump(calls: CallTally) -> DecisionPump:
    return DecisionPump(verdict_of_action={0: "continue"}, bus=EventBus(), counters=Counters(),
                        calls=calls.local(), name_of=str, comm_of=lambda _p: "x",
                        containers={}, container_ids={}, is_rule=lambda _nr: True)


def test_fast_and_native_records_fill_their_histograms() -> None:
    calls = CallTally()
    pump = _pump(calls)
    assert isinstance(Rec(1, 0, 0), seams.DecisionRecord)
    pump.publish([Rec(1, 0, 3_000), Rec(1, 0, 40_000), Rec(2, 0, 7_000, reason="tmpfs"),
                  Rec(1, 0, 0)])
    fast = pump.calls.histogram("fast")
    native = pump.calls.histogram("native")
    assert sum(fast.counts) == 2 and fast.sum_ns == 43_000
    assert sum(native.counts) == 1 and native.sum_ns == 7_000
    # 3 us falls in the 5 us bucket, 40 us in the 50 us one
    assert fast.counts[DURATION_BUCKETS_NS.index(5_000)] == 1
    assert fast.counts[DURATION_BUCKETS_NS.index(50_000)] == 1
