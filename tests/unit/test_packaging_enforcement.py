"""The shipped enforcement configuration agrees with itself and with the docs."""

from __future__ import annotations

import configparser
import json
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "packaging"
SHIM = "/usr/local/bin/interceptd-runc"
RUNTIME_PATH = "/usr/local/lib/interceptd/runtime-path"


def test_docker_default_runtime_is_the_shim():
    cfg = json.loads((PKG / "docker" / "daemon.json").read_text())
    assert cfg["default-runtime"] == "interceptd"
    assert cfg["runtimes"]["interceptd"]["path"] == SHIM
    assert "runc" not in cfg["runtimes"]  # dockerd 20.10: "runtime name 'runc' is reserved"


def test_dropins_put_the_shim_first_in_path():
    for unit in ("docker", "containerd"):
        ini = configparser.ConfigParser(strict=False, interpolation=None)
        ini.optionxform = str  # type: ignore[assignment,method-assign]
        ini.read_string((PKG / "systemd" / f"{unit}.service.d" / "interceptd.conf").read_text())
        env = ini["Service"]["Environment"]
        assert env.startswith("PATH="), env
        dirs = env[len("PATH="):].split(":")
        assert dirs[0] == RUNTIME_PATH and "/usr/sbin" in dirs and "/usr/bin" in dirs
        assert "interceptd.service" in ini["Unit"]["After"]


def test_containerd_config_names_the_shim():
    cfg = tomllib.loads((PKG / "containerd" / "interceptd.toml").read_text())
    plugins = cfg["plugins"]
    runc = plugins["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["BinaryName"] == SHIM
    assert plugins["io.containerd.runtime.v1.linux"]["runtime"] == SHIM


def test_docs_describe_the_same_setup():
    doc = (REPO / "docs" / "runtime.md").read_text()
    for needle in (RUNTIME_PATH, "packaging/systemd/docker.service.d/interceptd.conf",
                   "packaging/systemd/containerd.service.d/interceptd.conf",
                   "packaging/containerd/interceptd.toml", "--runtime=runc"):
        assert needle in doc, needle


def test_containerd_reads_the_config():
    """containerd itself (1.6 here) takes the file and keeps both settings."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("containerd") is None:  # pragma: no cover - in the set-up here
        pytest.skip("containerd is not installed")
    p = subprocess.run(["containerd", "--config", str(PKG / "containerd" / "interceptd.toml"),
                        "config", "dump"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    dumped = tomllib.loads(p.stdout)["plugins"]
    cri = dumped["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]
    assert cri["options"]["BinaryName"] == SHIM
    assert dumped["io.containerd.runtime.v1.linux"]["runtime"] == SHIM
