"""Session and per-test fixtures of the real-container harness
(tests/harness/README.md documents them)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `tests.harness` must import however pytest was started (pytest, pytest-3,
# python -m pytest), so make the repository root importable.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import cgroups
from tests.harness.build import build_helpers
from tests.harness.bundle import Bundle, BundleSpec, make_bundle
from tests.harness.daemon import Daemon, render_config
from tests.harness.rootfs import build_rootfs
from tests.harness.runtime import RUNTIMES, Runtime


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    """A session directory every container's root can traverse (0711):
    pytest's own tmp dirs are 0700, which a user-namespaced root cannot enter."""
    path = Path(tempfile.mkdtemp(prefix="interceptd-tests-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def helper_bins(session_dir: Path) -> dict[str, Path]:
    """Every tests/helpers/*.c, static: {name: path}."""
    return build_helpers(session_dir / "helpers")


@pytest.fixture(scope="session")
def rootfs(session_dir: Path, helper_bins: dict[str, Path]) -> Path:
    """The shared busybox rootfs (host-root owned; bundles copy it)."""
    return build_rootfs(session_dir / "rootfs", helper_bins)


@pytest.fixture(scope="session")
def crun_cgroups() -> Iterator[None]:
    cgroups.acquire()
    yield
    cgroups.release()


@pytest.fixture
def workdir(session_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A per-test directory (0711) under the session directory."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:40]
    path = session_dir / f"{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    os.chmod(path, 0o711)
    return path


@pytest.fixture
def new_id() -> Callable[[str], str]:
    """new_id(prefix) -> a unique container id."""
    return lambda prefix="c": f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def runtime_factory(workdir: Path, request: pytest.FixtureRequest) -> Iterator[
        Callable[[str], Runtime]]:
    """runtime_factory("runc"|"crun") -> Runtime with a --root in workdir.
    At teardown every container it still holds is force-deleted, and the
    test fails if any were left."""
    made: list[Runtime] = []

    def factory(name: str) -> Runtime:
        if name == "crun":
            request.getfixturevalue("crun_cgroups")
        rt = Runtime(name, workdir / f"state-{name}-{len(made)}")
        made.append(rt)
        return rt

    yield factory
    leftover = [f"{rt.name}:{cid}" for rt in made for cid in rt.cleanup()]
    assert not leftover, f"containers left behind: {leftover}"


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest, runtime_factory: Callable[[str], Runtime]) -> Runtime:
    """Parametrized: the test runs once with runc and once with crun."""
    return runtime_factory(request.param)


@pytest.fixture
def bundle_factory(workdir: Path, rootfs: Path) -> Callable[..., Bundle]:
    """bundle_factory(spec: BundleSpec | None = None, **spec_fields) -> Bundle,
    a fresh bundle in workdir with a private rootfs copy."""
    counter = iter(range(1 << 30))

    def factory(spec: BundleSpec | None = None, **fields: Any) -> Bundle:
        if spec is None:
            spec = BundleSpec(**fields)
        return make_bundle(workdir / f"bundle-{next(counter)}", rootfs, spec)

    return factory


@pytest.fixture
def daemon_factory(workdir: Path, request: pytest.FixtureRequest) -> Iterator[
        Callable[..., Daemon]]:
    """daemon_factory(rules=[...], sections={...}, extra="", args=[...]) ->
    a started interceptd in its own state dir. At teardown: SIGTERM to that
    pid, and the test fails unless it exits 0 (its log is printed)."""
    started: list[Daemon] = []

    def factory(rules: list[dict[str, Any]] | None = None,
                sections: dict[str, dict[str, Any]] | None = None, extra: str = "",
                args: list[str] | None = None, env: dict[str, str] | None = None) -> Daemon:
        # The eBPF layer only where a test asks for it ({"ebpf": {...}}): each
        # daemon would otherwise run a bcc compile and attach tracepoints of its own.
        sections = {"ebpf": {"enabled": False}, **(sections or {})}
        d = Daemon(workdir / f"daemon{len(started)}",
                   render_config(rules, sections, extra), args=args, env=env)
        started.append(d)
        return d.start()

    yield factory
    failures = []
    rep = getattr(request.node, "rep_call", None)
    for d in started:
        rc = d.stop()
        if rc != 0:
            failures.append(f"interceptd (pid {d.pid}) exited {rc}; log:\n{d.log()}")
        elif rep is not None and rep.failed:
            print(f"--- interceptd (pid {d.pid}) log ---\n{d.log()}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A daemon with an empty config."""
    return daemon_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Remember each phase's report so fixtures can tell a failed test."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
