"""`make deb`'s package, checked without installing it: the tree, the unit verified by
systemd-analyze inside the extracted root, the installed programs run from it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = "lib/systemd/system/interceptd.service"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    deb = subprocess.run([str(REPO / "packaging/deb/build.sh"), str(out)], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    root = out / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    info = subprocess.run(["dpkg-deb", "-f", deb], check=True, capture_output=True,
                          text=True).stdout
    (out / "control").write_text(info)
    conff = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb], check=True,
                           capture_output=True).stdout
    (out / "ctrl.tar").write_bytes(conff)
    return root


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian not installed")
def test_lintian_clean(extracted: Path):
    [deb] = extracted.parent.glob("*.deb")
    res = subprocess.run(["lintian", "--profile", "debian", "--suppress-tags-from-file",
                          str(REPO / "packaging/deb/lintian-overrides.txt"), str(deb)],
                         capture_output=True, text=True)
    tags = [ln for ln in (res.stdout + res.stderr).splitlines()
            if ln and not ln.startswith("running with root")]
    assert res.returncode == 0 and tags == [], tags


def run_installed(root: Path, prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed wrapper, with its package path pointed into the extracted root."""
    text = (root / "usr/bin" / prog).read_text()
    assert text.startswith("#!/usr/bin/python3 -I\n")
    code = text.replace('"/usr/lib/interceptd"', repr(str(root / "usr/lib/interceptd")))
    return subprocess.run(["/usr/bin/python3", "-I", "-c", code, *args],
                          capture_output=True, text=True)


def test_tree(extracted: Path):
    for f in ("usr/bin/interceptd", "usr/bin/interceptctl", "usr/sbin/interceptd-runc",
              "etc/interceptd/interceptd.toml", UNIT,
              "usr/lib/interceptd/interceptd/_core.abi3.so",
              # the /proc/sys createRuntime hook, where emulbinds.py looks for it
              "usr/lib/interceptd/interceptd/runtime/interceptd-sysctl-hook",
              "usr/share/interceptd/docker/daemon.json",
              "usr/share/interceptd/systemd/docker.service.d/interceptd.conf",
              "usr/share/interceptd/systemd/containerd.service.d/interceptd.conf",
              "usr/share/interceptd/containerd/interceptd.toml",
              "usr/share/doc/interceptd/copyright"):
        assert (extracted / f).exists(), f
    assert (extracted / "usr/lib/interceptd/runtime-path/runc").resolve() == \
        extracted / "usr/sbin/interceptd-runc"
    # The snippets name the installed launcher, not a /usr/local path nothing installs.
    for f in (extracted / "usr/share/interceptd").rglob("*"):
        if f.is_file():
            text = f.read_text()
            assert "/usr/local/bin/interceptd-runc" not in text, f
            assert "/usr/local/lib/interceptd" not in text, f
    control = (extracted.parent / "control").read_text()
    assert "Depends: python3 (>= 3.11), python3-cffi-backend, runc | crun, fuse3" in control
    ctrl = subprocess.run(["tar", "-xOf", str(extracted.parent / "ctrl.tar"), "./conffiles"],
                          check=True, capture_output=True, text=True).stdout
    assert ctrl.split() == ["/etc/interceptd/interceptd.toml"]
    assert not list(extracted.rglob("__pycache__"))


def test_programs_run_from_the_package(extracted: Path):
    v = run_installed(extracted, "interceptd", "--version")
    assert v.returncode == 0 and v.stdout.strip() == "interceptd 0.1.0", v
    ok = run_installed(extracted, "interceptd", "--check-config",
                       str(extracted / "etc/interceptd/interceptd.toml"))
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok
    bad = extracted.parent / "bad.toml"
    bad.write_text('[daemon]\nlog_level = "loud"\n')
    res = run_installed(extracted, "interceptd", "--check-config", str(bad))
    assert res.returncode == 1 and f"{bad}:2: daemon.log_level" in res.stderr
    probe = run_installed(extracted, "interceptctl", "probe")
    assert probe.returncode == 0 and re.search(r"^user_notif +yes$", probe.stdout, re.M), probe
    # The launcher passes through to the real runtime for plain subcommands.
    runc = subprocess.run([str(extracted / "usr/sbin/interceptd-runc"), "--version"],
                          capture_output=True, text=True)
    assert runc.returncode == 0 and "runc" in (runc.stdout + runc.stderr).lower(), runc


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies_in_the_installed_tree(extracted: Path, tmp_path: Path):
    # The extracted root plus the system's own units (targets the unit names).
    root = tmp_path / "root"
    shutil.copytree(extracted, root, symlinks=True)
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True,
                    dirs_exist_ok=True)
    shutil.copy(extracted / UNIT, root / UNIT)

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                               "interceptd.service"], capture_output=True, text=True)

    res = verify()
    assert res.returncode == 0 and res.stderr == "", res.stderr
    # Not vacuous: without the ExecStart program the same check fails.
    (root / "usr/bin/interceptd").unlink()
    res = verify()
    assert res.returncode != 0 and "/usr/bin/interceptd" in res.stderr
    text = (extracted / UNIT).read_text()
    for line in ("Type=notify", "Restart=on-failure", "Before=docker.service containerd.service",
                 "WatchdogSec=", "FileDescriptorStoreMax=", "OOMScoreAdjust=", "KillMode=",
                 "LimitNOFILE=", "ExecReload=/usr/bin/interceptctl"):
        assert line in text, line


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
