"""A silent network partition in Linux network namespaces, and its healing.

Each node runs (``ip netns exec``) in a namespace of its own, joined by a veth pair to a bridge
that lives in one more namespace; every namespace, link and address (10.203.0.0/24) is made by
the test and deleted after it, so no packet of the test ever leaves them. Taking the bridge end
of node 2's veth down cuts node 2 off without a single RST or ICMP: only ticks can tell.

While cut off, node 2 and node 1 both claim the name ``split``. Promises checked: both sides
declare the other down (by ticks); nodes 1 and 3 never lose each other; after the link comes
back the mesh heals by itself, the registries converge (same claimants, same ``lookup`` answer
everywhere) and each claimant receives ``MultipleClaim("split")`` exactly once; the streams
between all pairs show no duplicate, no reordering and gaps only at down marks.

Needs root and iproute2 (CI runs as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_util import CA
from fault_util import Fleet, check_streams, quiesce

pytestmark = pytest.mark.slow

#: net_ticktime (seconds) of the partitioned cluster.
TICK = 2.0
#: Port every node listens on (each namespace has its own port space).
PORT = 7000
#: Private range used only inside the test's namespaces.
SUBNET = "10.203.0"
#: How long the partition lasts after both sides declared each other down. The dialling side
#: starts redialling at once, into silence, and the kernel retransmits an unanswered SYN with
#: exponential backoff (1, 3, 7, 15, 31, ... s): a dialler that leaves its connect() to the
#: kernel reconnects only at the next retransmission (measured here after a 20 s partition:
#: 15.6 s after the link came back), one that bounds its connect and retries on its own
#: schedule within a few seconds (measured: 1.7 s).
APART = 20.0
#: After the link is back, the mesh must be whole again within this many seconds: a redial
#: attempt every RECONNECT_MAX (2 s, +50% jitter) with a TCP connect bounded by a couple of
#: seconds, plus a handshake; the rest is slack for a loaded machine.
HEAL_WITHIN = 8.0
SETTLE = 0.5
IDS = (1, 2, 3)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespaces:
    """A bridge namespace and one namespace per node, linked by veth pairs to the bridge."""

    def __init__(self, ids: tuple[int, ...]) -> None:
        tag = f"rg{os.getpid()}"
        self.bridge = f"{tag}br"
        self.node = {i: f"{tag}n{i}" for i in ids}
        self.created: list[str] = []

    def address(self, node_id: int) -> str:
        return f"{SUBNET}.{node_id}"

    def create(self) -> None:
        for ns in (self.bridge, *self.node.values()):
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, ns in self.node.items():
            # Both ends are born inside the test's namespaces: nothing appears in the host's.
            _ip("-n", self.bridge, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", self.bridge, "link", "set", f"v{i}", "master", "br0")
            _ip("-n", self.bridge, "link", "set", f"v{i}", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def cut(self, node_id: int) -> None:
        _ip("-n", self.bridge, "link", "set", f"v{node_id}", "down")

    def heal(self, node_id: int) -> None:
        _ip("-n", self.bridge, "link", "set", f"v{node_id}", "up")

    def delete(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.created = []


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to create network namespaces")
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (CI runs as root)")
    spaces = Namespaces(IDS)
    try:
        try:
            spaces.create()
            # Running a program inside one must work too (it remounts /sys: some containers refuse).
            _ip("netns", "exec", spaces.node[IDS[0]], "true")
        except (subprocess.CalledProcessError, OSError) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"cannot create network namespaces here: {exc} {stderr.decode(errors='replace')}")
        yield spaces
    finally:
        spaces.delete()


def _spec(folder: Path, spaces: Namespaces) -> Path:
    ca = CA(folder)
    for i in IDS:
        ca.issue(i)
    spec = {
        "nodes": [{"id": i, "address": f"{spaces.address(i)}:{PORT}"} for i in IDS],
        "node_key_path": "reign_node.%d.key",
        "node_cert_path": "reign_node.%d.crt",
        "cluster_cert_path": "reign_ca.crt",
        "net_ticktime": TICK,
    }
    path = folder / "cluster.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


@pytest.mark.timeout(120)
async def test_silent_partition_heals_and_the_registries_converge(tmp_path: Path, netns: Namespaces) -> None:
    fleet = Fleet(tmp_path, _spec(tmp_path, netns), netns=netns.node)
    try:
        n1, n2, n3 = await fleet.start_all(IDS)
        await fleet.wait_mesh(IDS)
        for child in (n1, n2, n3):
            child.send("stream", peers=[i for i in IDS if i != child.node_id], rate=100)
        await asyncio.sleep(1.0)

        marks = {c.node_id: len(c.events) for c in (n1, n2, n3)}
        cut_at = time.monotonic()
        netns.cut(2)
        downs = [(n1, 2), (n3, 2), (n2, 1), (n2, 3)]
        detected = []
        for child, peer in downs:  # both sides, by ticks alone
            down = await child.wait("status", lambda e, p=peer: e["peer"] == p and not e["up"],
                                    since=marks[child.node_id], timeout=3 * TICK)
            latency = down["t"] - cut_at
            assert TICK * 0.9 <= latency <= TICK * 1.25 + 0.75, (child.node_id, peer, latency)
            detected.append(down["t"])

        n1.send("register", name="split")
        n2.send("register", name="split")
        await n1.wait("registered")
        await n2.wait("registered")
        await n1.sync()
        assert (await n3.lookup("split")) == {"split": [n1.inbox]}
        assert (await n2.lookup("split")) == {"split": [n2.inbox]}  # node 2 sees only its own
        await asyncio.sleep(max(detected) + APART - time.monotonic())  # redials go unanswered

        healed_at = time.monotonic()
        netns.heal(2)
        for child, peer in downs:
            await child.wait("status", lambda e, p=peer: e["peer"] == p and e["up"],
                             since=marks[child.node_id], timeout=HEAL_WITHIN + 20)
        await fleet.wait_mesh(IDS)
        heal_time = time.monotonic() - healed_at
        for a, b in ((n1, 3), (n3, 1)):
            assert not a.status(b, False), f"node {a.node_id} saw node {b} down"
        for child in (n1, n2, n3):
            await child.sync()

        for claimant in (n1, n2):
            await claimant.wait("multiple_claim", lambda e: e["name"] == "split", timeout=10)
        await asyncio.sleep(SETTLE)
        assert len(n1.find("multiple_claim")) == 1 and len(n2.find("multiple_claim")) == 1
        assert not n3.find("multiple_claim")
        views = [await c.request("lookup", "lookup", names=["split"]) for c in (n1, n2, n3)]
        assert all(v["result"] == views[0]["result"] for v in views), views
        assert sorted(views[0]["result"]["split"]) == sorted([n1.inbox, n2.inbox])
        assert all(v["first"] == views[0]["first"] for v in views), views
        assert all(v["multiple_claim_count"] == 1 for v in views)

        final = await quiesce(fleet, list(IDS))
        counts = check_streams(fleet.history, final)
        print(f"\npartition healed in {heal_time:.2f} s after the link came back; {counts}")
        assert heal_time < HEAL_WITHIN, (
            f"the mesh took {heal_time:.1f} s to heal after the link came back")
    finally:
        await fleet.close()
