"""A graceful hand-over's last step in the predecessor (docs/operations.md, "Restarts"):
stop acting without closing anything.

The successor replays from the journal every notification received here and not
answered. That is right for a call nobody has begun, and wrong for one whose action is
done and whose answer is not: run again, a umount fails with EINVAL, a mount stacks a
second copy. So before the process exits, every worker finishes the calls in its hands
and stops, and so does every native helper; what the receivers take meanwhile is only
queued or answered by the verdict table, both safe to replay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from interceptd.seams import Container

log = logging.getLogger("interceptd.quiesce")


def stop_acting(containers: Iterable[Container], workers: list[threading.Thread],
                wait: float) -> dict[str, int]:
    """Workers must have been told to stop between calls already; this wakes them, stops
    the helpers and waits up to `wait` seconds for both. Returns what still runs."""
    chans = [c.channel for c in containers if c.channel is not None]
    for ch in chans:
        ch.interrupt()  # a worker blocked in wait() looks at its stop flag
        ch.quiesce_native(0)  # all helpers at once, then wait for each
    end = time.monotonic() + wait
    for t in workers:
        t.join(max(0.0, end - time.monotonic()))
    left = {"workers": sum(t.is_alive() for t in workers),
            "helpers": sum(not ch.quiesce_native(max(0.0, end - time.monotonic()))
                           for ch in chans)}
    if any(left.values()):
        log.warning("hand-over: still acting at exit", extra={"fields": left})
    return left
