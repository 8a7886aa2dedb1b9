"""A Python handler module for tests, loaded by the daemon through
`[handlers] modules = ["tests.harness.handlers"]`.

It answers the syscalls in `[test_handler] syscalls` (default: sysfs) with
what the container's annotation `org.interceptd.test/answer` says, else with
`[test_handler] answer`: "value:N" or "errno:N" (default "value:4242"). So
each container can get its own answer, which shows that the daemon routes
every notification to the handler with the right container.
`[test_handler] direct = false` turns the core's direct mode off for every
container (the benchmark's comparison row)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from interceptd.verdict import Verdict

ANNOTATION = "org.interceptd.test/answer"
# Milliseconds the handler sleeps before answering (a notification kept in handling,
# for tests that kill its caller meanwhile).
DELAY_ANNOTATION = "org.interceptd.test/delay-ms"


def parse_answer(text: str) -> Verdict:
    kind, _, num = text.partition(":")
    if kind == "value":
        return Verdict.value(int(num, 0), "test handler")
    if kind == "errno":
        return Verdict.errno(int(num, 0), "test handler")
    raise ValueError(f"bad test answer {text!r}")


def answer(default: str, cache: dict[str, Verdict], req: Any) -> Verdict:
    annotations = getattr(req.container, "annotations", None) or {}
    delay = annotations.get(DELAY_ANNOTATION)
    if delay:
        time.sleep(int(delay) / 1000)
    text = annotations.get(ANNOTATION, default)
    # Verdicts are immutable: parse each answer text once, not on every call
    # (this handler is what the Python-path benchmark measures).
    v = cache.get(text)
    if v is None:
        if len(cache) >= 1024:
            cache.clear()
        v = cache[text] = parse_answer(text)
    return v


def register(handlers: Any, cfg: Any) -> None:
    section = cfg.sections.get("test_handler", {})
    default = section.get("answer", "value:4242")
    parse_answer(default)  # a bad default is a start-up error, not a per-call one
    for name in section.get("syscalls", ["sysfs"]):
        handlers.register(name, partial(answer, default, {}))
    if section.get("direct", True) is False:
        handlers.on_attach(lambda container, core: container.channel.set_direct(False))
