"""`make demo`: a newcomer's first five minutes with interceptd.

Starts the daemon (its own state dir, /run/interceptd-demo) unless one already answers
there, runs a busybox container through interceptd-runc over runc and, when Docker is
installed, through a private dockerd with the shipped daemon.json, and shows: the user
namespace, a refused escape (umount /proc) with its `interceptctl trace` line, memory as
the container sees it beside the host's, a counters sample. Then it removes everything
it started, each by the pid or path it holds (a daemon it found running is left alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness import dockerd as dockerd_mod  # noqa: E402
from tests.harness.rootfs import build_rootfs  # noqa: E402

BIN = REPO / ".venv" / "bin"
STATE = Path(os.environ.get("INTERCEPTD_DEMO_STATE", "/run/interceptd-demo"))
IN_CONTAINER = (
    'echo "uid_map:  $(cat /proc/self/uid_map | tr -s " ")"; '
    'umount /proc 2>/dev/null && echo "umount /proc: done (!)" '
    '|| echo "umount /proc: refused ($(umount /proc 2>&1 | sed "s/.*: //"))"; '
    'free -m | sed -n 2p | tr -s " " | sed "s/^/free:     /"'
)


def say(title: str, *lines: str) -> None:
    print(f"== {title}")
    for line in lines:
        print(f"   {line}")
    sys.stdout.flush()


def ctl(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "interceptctl"), "--state-dir", str(STATE), *args],
                          capture_output=True, text=True, timeout=timeout)


class Demo:
    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="icd-demo-", dir="/tmp"))
        os.chmod(self.top, 0o711)
        self.cleanups: list[Callable[[], None]] = []
        self.cfg = self.top / "interceptd.toml"
        self.cfg.write_text((REPO / "packaging" / "interceptd.toml").read_text())

    # -- the daemon --------------------------------------------------------

    def daemon(self) -> None:
        if ctl("status", timeout=2).returncode == 0:
            say("daemon", f"already running at {STATE}: using it, leaving it running")
            return
        log = open(self.top / "interceptd.log", "ab")  # noqa: SIM115 - closed at cleanup
        proc = subprocess.Popen(
            [str(BIN / "interceptd"), "--state-dir", str(STATE), "--config", str(self.cfg),
             "--log-level", "info"], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
            shutil.rmtree(STATE, ignore_errors=True)
            shutil.rmtree(str(STATE) + "-rootfs", ignore_errors=True)

        self.cleanups.append(stop)
        deadline = time.monotonic() + 30
        while not (STATE / "runtime.sock").exists() or ctl("status", timeout=2).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.top / "interceptd.log").read_text())
            time.sleep(0.1)
        say("daemon", f"started: pid {proc.pid}, state dir {STATE}")

    # -- a container through interceptd-runc ---------------------------------

    def runc_container(self) -> None:
        rootfs = build_rootfs(self.top / "rootfs")
        bundle = self.top / "bundle"
        bundle.mkdir()
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": str(rootfs), "readonly": False}
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["sh", "-c", IN_CONTAINER]
        (bundle / "config.json").write_text(json.dumps(spec))
        root = self.top / "runc-root"
        cid = f"demo-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ, INTERCEPTD_STATE_DIR=str(STATE), INTERCEPTD_CONFIG=str(self.cfg),
                   INTERCEPTD_RUNTIME="runc")
        shim = [str(BIN / "interceptd-runc"), "--root", str(root)]

        def delete() -> None:
            subprocess.run([*shim, "delete", "-f", cid], env=env, capture_output=True)

        self.cleanups.append(delete)
        trace = subprocess.Popen([str(BIN / "interceptctl"), "--state-dir", str(STATE),
                                  "trace", "--syscall", "umount2", "--source", "seccomp",
                                  "--count", "1"],  # the policy's decision and reason
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)  # subscribed before the container runs
        res = subprocess.run([*shim, "run", "--bundle", str(bundle), cid], env=env,
                             capture_output=True, text=True, timeout=60)
        try:
            traced, _ = trace.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            trace.kill()
            traced, _ = trace.communicate()
        out = [line for line in res.stdout.splitlines() if line]
        if res.returncode != 0:
            out.append(f"(exit {res.returncode}: {res.stderr.strip()})")
        say("busybox through interceptd-runc (runc)", *out)
        say("interceptctl trace", *traced.strip().splitlines())
        host = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout
        mem = " ".join(host.splitlines()[1].split())
        say("the host's memory, for comparison", f"free:     {mem}")

    # -- the same through a private dockerd ------------------------------------

    def docker_container(self) -> None:
        if dockerd_mod.DOCKERD is None or dockerd_mod.DOCKER is None:
            say("docker", "not installed: skipped")
            return
        from interceptd.runtime.launcher import build

        top = self.top / "dk"
        top.mkdir()
        d = dockerd_mod.Dockerd(top)
        shim = build(str(top / "interceptd-runc"))
        cfg = json.loads((REPO / "packaging" / "docker" / "daemon.json").read_text())
        cfg["runtimes"]["interceptd"]["path"] = shim
        shadow = top / "runtime-path"  # packaging/systemd/docker.service.d's PATH
        shadow.mkdir()
        for name in ("runc", "crun"):
            (shadow / name).symlink_to(shim)
        env = dict(os.environ, INTERCEPTD_STATE_DIR=str(STATE), INTERCEPTD_CONFIG=str(self.cfg),
                   INTERCEPTD_RUNTIME="runc",
                   PATH=f"{shadow}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}")

        def stop() -> None:
            d.stop()
            dockerd_mod.unmount_under(str(top))

        self.cleanups.append(stop)
        d.launch(cfg, env)
        d.import_busybox()
        res = d.docker("run", "--rm", "--network=none", dockerd_mod.IMAGE, "sh", "-c",
                       IN_CONTAINER, check=False)
        out = [line for line in res.stdout.splitlines() if line]
        if res.returncode != 0:
            out.append(f"(exit {res.returncode}: {res.stderr.strip()})")
        say("busybox through a private dockerd (packaging/docker/daemon.json)", *out)

    # -- counters ------------------------------------------------------------

    def metrics(self) -> None:
        st = json.loads(ctl("status", "-o", "json").stdout)
        addr = st.get("metrics_address", "off")
        lines = []
        if addr != "off":
            import urllib.request

            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://{addr}/metrics", timeout=2) as r:
                lines = [ln for ln in r.read().decode().splitlines()
                         if ln.startswith("interceptd_")][:4]
        if not lines:
            c = st.get("counters", {})
            lines = [f"{name}{{{label}}} {n}" for name in ("decisions", "containers_attached")
                     for label, n in sorted(c.get(name, {}).items())]
            lines.insert(0, "(no metrics endpoint served: the daemon's counters instead)")
        say("metrics sample", *lines)

    def cleanup(self) -> None:
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # go on: the rest still has to go
                print(f"cleanup: {e}", file=sys.stderr)
        shutil.rmtree(self.top, ignore_errors=True)


def main() -> int:
    demo = Demo()
    try:
        demo.daemon()
        demo.runc_container()
        if os.environ.get("INTERCEPTD_DEMO_DOCKER", "1") != "0":
            demo.docker_container()
        demo.metrics()
    finally:
        demo.cleanup()
    say("cleaned up", "daemon, containers, dockerd and temporary files removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
