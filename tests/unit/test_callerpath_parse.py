"""callerpath.parse: which spellings name the caller's own fd, cwd or root through /proc."""

from __future__ import annotations

import pytest

from interceptd.handlers.callerpath import ProcRef, parse


@pytest.mark.parametrize(("path", "ref"), [
    ("/proc/self/fd/6", ProcRef("self", None, "fd", 6, "")),
    ("//proc//self/./fd/6", ProcRef("self", None, "fd", 6, "")),
    ("/proc/self/fd/6/", ProcRef("self", None, "fd", 6, ".")),
    ("/proc/self/fd/6/sub/dir", ProcRef("self", None, "fd", 6, "sub/dir")),
    ("/proc/self/fd/6/../x", ProcRef("self", None, "fd", 6, "../x")),
    ("/proc/thread-self/fd/0", ProcRef("thread-self", None, "fd", 0, "")),
    ("/proc/42/fd/3", ProcRef("pid", 42, "fd", 3, "")),
    ("/proc/self/cwd", ProcRef("self", None, "cwd", None, "")),
    ("/proc/1/root/etc", ProcRef("pid", 1, "root", None, "etc")),
    ("/proc/self/exe", ProcRef("self", None, "exe", None, "")),
    ("/proc/7/exe", ProcRef("pid", 7, "exe", None, "")),
    ("/proc/self/task/12/fd/3", ProcRef("self", None, "fd", 3, "", 12)),
    ("/proc/7/task/7/cwd/x", ProcRef("pid", 7, "cwd", None, "x", 7)),
])
def test_caller_spellings(path: str, ref: ProcRef) -> None:
    assert parse(path) == ref


@pytest.mark.parametrize("path", [
    "proc/self/fd/6",            # relative: the caller's cwd decides, ordinary resolution
    "/proc/self",                # the process directory itself
    "/proc/self/fd",             # the fd directory
    "/proc/self/fd/06",          # procfs has no leading zeros
    "/proc/self/fd/-1", "/proc/self/fd/x", "/proc/self/fd/99999999999",
    "/proc/007/fd/1", "/proc/0x1/fd/1",
    "/proc/self/ns/mnt", "/proc/thread-self/task/1/fd/3", "/proc/self/task/x/fd/3",
    "/proc/self/task/1", "/proc/self/task/1/ns/mnt",
    "/proc/../proc/self/fd/6",  # a ".." before the object: not taken apart here
    "/procx/self/fd/6", "/mnt/proc/self/fd/6", "/proc/timer_list", "/",
    "/proc/self/fd/\u0667",       # a non-ASCII digit
])
def test_other_paths_are_left_alone(path: str) -> None:
    assert parse(path) is None
