"""Real-container test harness: busybox rootfs, OCI bundles with user
namespaces and seccomp notify, runc/crun runners, and the real daemon.
See tests/harness/README.md; pytest fixtures are in tests/conftest.py."""

from .bundle import Bundle, BundleSpec, bounding_caps, make_bundle, oci_config
from .daemon import Daemon, render_config
from .listener import StubListener
from .runtime import RUNTIMES, Result, Runtime, RuntimeFailure, output

__all__ = [
    "RUNTIMES", "Bundle", "BundleSpec", "Daemon", "Result", "Runtime", "RuntimeFailure",
    "StubListener", "bounding_caps", "make_bundle", "oci_config", "output", "render_config",
]
