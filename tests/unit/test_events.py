import json
import threading

from interceptd.events import Counters, Event, EventBus

SCHEMA = {"time", "container", "pid", "comm", "syscall", "args", "verdict", "errno", "reason",
          "source"}


def ev(i=0, **kw):
    d = dict(time=1.5, container="c1", pid=10 + i, comm="sh", syscall="sysfs", args=[1, 2, 3],
             verdict="errno", errno=1, reason="rule")
    d.update(kw)
    return Event(**d)


def test_event_json_schema():
    d = json.loads(ev().to_json())
    assert set(d) == SCHEMA
    assert d["source"] == "seccomp"
    assert d["args"] == [1, 2, 3]
    assert isinstance(d["time"], float)
    assert "\n" not in ev().to_json()


def test_event_value_only_when_set():
    d = json.loads(ev(verdict="value", errno=0, value=42).to_json())
    assert set(d) == SCHEMA | {"value"}
    assert d["value"] == 42


def test_bus_fans_out_and_counts_drops():
    bus = EventBus()
    small = bus.subscribe(maxlen=2)
    big = bus.subscribe(maxlen=100)
    for i in range(5):
        bus.publish(ev(i))
    assert small.dropped == 3
    assert big.dropped == 0
    assert bus.dropped == 3
    assert bus.published == 5
    assert [small.get(0).pid for _ in range(2)] == [10, 11]
    assert small.get(0) is None
    assert [big.get(0).pid for _ in range(5)] == [10, 11, 12, 13, 14]


def test_publish_never_blocks_without_readers():
    bus = EventBus()
    bus.subscribe(maxlen=1)
    done = threading.Event()

    def flood():
        for i in range(10000):
            bus.publish(ev(i))
        done.set()

    threading.Thread(target=flood).start()
    assert done.wait(5)
    assert bus.dropped == 9999


def test_unsubscribe_and_close_wakes_reader():
    bus = EventBus()
    sub = bus.subscribe(4)
    got = []
    t = threading.Thread(target=lambda: got.append(sub.get(timeout=5)))
    t.start()
    sub.close()
    t.join(2)
    assert not t.is_alive()
    assert got == [None]
    assert bus.subscribers == 0
    bus.publish(ev())
    assert bus.dropped == 0


def test_get_blocks_until_publish():
    bus = EventBus()
    sub = bus.subscribe(4)
    threading.Timer(0.05, lambda: bus.publish(ev(7))).start()
    e = sub.get(timeout=5)
    assert e is not None and e.pid == 17


def test_counters():
    c = Counters()
    c.inc("listener_errors", "no fd")
    c.inc("listener_errors", "no fd")
    c.inc("decisions", "errno", 5)
    c.inc("plain")
    assert c.get("listener_errors", "no fd") == 2
    assert c.snapshot() == {"listener_errors": {"no fd": 2}, "decisions": {"errno": 5},
                            "plain": {"": 1}}
