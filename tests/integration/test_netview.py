"""A container's network view (pyroute2, read inside its network namespace): a veth
pair between a namespace the container joins and a peer namespace, both made by the
test, and traffic from the peer that shows in `containers -v` and in the metrics."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Runtime
from tests.integration.test_metrics_endpoint import free_port, get

CTL = [sys.executable, "-m", "interceptd.cli"]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def veth_netns():
    """(container netns name, peer netns name, container address); deleted afterwards
    (deleting a namespace deletes its end of the veth pair, and the pair with it)."""
    tag = uuid.uuid4().hex[:8]
    inner, peer = f"icd-in-{tag}", f"icd-peer-{tag}"
    ip("netns", "add", inner)
    try:
        ip("netns", "add", peer)
        try:
            # Created inside the peer namespace: the host's own network is never touched.
            ip("-n", peer, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0")
            ip("-n", peer, "link", "set", "eth0", "netns", inner)
            ip("-n", peer, "addr", "add", "10.250.7.2/24", "dev", "veth0")
            ip("-n", peer, "link", "set", "veth0", "up")
            ip("-n", inner, "addr", "add", "10.250.7.1/24", "dev", "eth0")
            ip("-n", inner, "link", "set", "eth0", "up")
            ip("-n", inner, "link", "set", "lo", "up")
            yield inner, peer, "10.250.7.1"
        finally:
            ip("netns", "del", peer)
    finally:
        ip("netns", "del", inner)


def test_veth_traffic_shows_in_the_containers_network_view(
        runtime: Runtime, bundle_factory, daemon_factory, new_id, veth_netns):
    inner, peer, addr = veth_netns
    cid = new_id("net")
    port = free_port()
    d = daemon_factory(sections={"metrics": {"containers": [cid]}},
                       args=["--metrics-address", f"127.0.0.1:{port}"])
    b = bundle_factory(args=["sleep", "60"], notify=["sysfs"], listener_path=d.listener_path)
    for ns in b.config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/var/run/netns/{inner}"
    # sysfs can be mounted only by the owner of the network namespace (here host
    # root): bind the host's read-only instead, as Docker does with --network=host.
    for m in b.config["mounts"]:
        if m["destination"] == "/sys":
            m.update(type="bind", source="/sys",
                     options=["rbind", "nosuid", "noexec", "nodev", "ro"])
    b.write_config()
    with runtime.started(b, cid):
        d.wait_container(cid)
        subprocess.run(["ip", "netns", "exec", peer, "busybox", "ping", "-c", "20", "-i",
                        "0.01", "-q", "-s", "1000", addr], check=True, capture_output=True,
                       timeout=30)
        out = subprocess.run([*CTL, "--state-dir", str(d.state_dir), "containers", "-v"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        block = out.split(f"\n{cid}\n", 1)[1]
        eth = next(ln.split() for ln in block.splitlines() if ln.strip().startswith("eth0"))
        rx_bytes, rx_pkts, _rx_drop, tx_bytes, tx_pkts = (int(x) for x in eth[1:6])
        assert rx_pkts >= 20 and tx_pkts >= 20 and rx_bytes >= 20 * 1000, eth
        assert tx_bytes >= 20 * 1000
        assert any(ln.strip().startswith("lo ") for ln in block.splitlines())
        time.sleep(0.1)
        fams = {f.name: f for f in text_string_to_metric_families(
            get(f"http://127.0.0.1:{port}/metrics"))}

        def val(fam: str, **labels: str) -> float:
            return next(s.value for s in fams[fam].samples
                        if all(s.labels.get(k) == v for k, v in labels.items()))

        assert val("interceptd_container_network_bytes", container=cid,
                   direction="rx") >= 20 * 1000
        assert val("interceptd_container_network_packets", container=cid,
                   direction="tx") >= 20
        assert val("interceptd_container_network_interfaces", container=cid) == 1
        # Only the configured container gets series.
        assert {s.labels["container"] for s in
                fams["interceptd_container_network_bytes"].samples} == {cid}
