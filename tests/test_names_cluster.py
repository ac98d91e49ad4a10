"""The name registry across real nodes over TLS on loopback (several nodes in one loop), plus a
kill -9 of a node in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import reign
from reign._runtime.names import MAX_NAME_BYTES

from cluster_util import ROOT, drain, make_cluster, wait_connected, wait_for

#: How long to keep listening for a duplicate notice after the expected ones arrived.
SETTLE = 0.3


@pytest.fixture
def spec3(tmp_path: Path) -> Path:
    return make_cluster(tmp_path, [1, 2, 3], net_ticktime=4)


@contextlib.asynccontextmanager
async def running(spec: Path, ids: list[int]) -> AsyncIterator[list[reign.Node]]:
    nodes = [reign.create_from_spec_file(spec, i) for i in ids]
    try:
        for node in nodes:
            await node.start()
        await wait_connected(nodes)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def sync_all(nodes: list[reign.Node]) -> None:
    for node in nodes:
        await node.names.sync(timeout=10)


async def settled(mbox: reign.Mailbox) -> list[object]:
    """Everything that arrives in ``mbox`` within SETTLE seconds (duplicates would show)."""
    await asyncio.sleep(SETTLE)
    return drain(mbox)


def ids(addrs: list[reign.Address]) -> list[reign.MailboxID]:
    return [a.id for a in addrs]


async def test_register_on_each_node_and_lookups_agree(spec3: Path) -> None:
    async with running(spec3, [1, 2, 3]) as nodes:
        mine = {}
        for node in nodes:
            addr, _ = node.new_mailbox()
            mine[node.id] = addr
            node.names.register(f"svc{node.id}", addr)
            node.names.register("everyone", addr)
        await sync_all(nodes)
        for node in nodes:
            for owner, addr in mine.items():
                found = node.names.lookup(f"svc{owner}")
                assert found == addr
                assert found is not None and found._router is node  # usable from this node
            assert node.names.lookup("everyone") == mine[1]  # the smallest, on every node
            assert ids(node.names.lookup_all("everyone")) == [mine[i].id for i in (1, 2, 3)]
            assert node.names.seen_names("svc1", "svc2", "svc3", "nobody") == [True, True, True, False]
            assert node.names.multiple_claim_count == 1


async def test_sync_makes_a_claim_visible_everywhere(spec3: Path) -> None:
    async with running(spec3, [1, 2, 3]) as (n1, n2, n3):
        addr, _ = n1.new_mailbox()
        for i in range(50):
            n1.names.register(f"k{i}", addr)
        await n1.names.sync(timeout=10)
        # No waiting: sync returned only after both peers had applied every change.
        for node in (n2, n3):
            assert node.names.seen_names(*(f"k{i}" for i in range(50))) == [True] * 50
            assert node.names.lookup("k49") == addr


async def test_names_send_reaches_a_claimant_on_another_node(spec3: Path) -> None:
    async with running(spec3, [1, 2, 3]) as (n1, n2, _):
        addr, mbox = n1.new_mailbox()
        assert n2.names.send("echo", "early") is False
        n1.names.register("echo", addr)
        await n1.names.sync(timeout=10)
        assert n2.names.send("echo", ("hello", 2)) is True
        assert await mbox.receive(timeout=10) == ("hello", 2)


async def test_conflicts_notify_every_claimant_exactly_once(spec3: Path) -> None:
    async with running(spec3, [1, 2, 3]) as nodes:
        boxes = [node.new_mailbox() for node in nodes]
        expected = [0, 0, 0]
        for joined, (node, (addr, _)) in enumerate(zip(nodes, boxes)):
            node.names.register("dup", addr)
            await node.names.sync(timeout=10)
            if joined:  # every claimant so far, the newest included, hears once
                for i in range(joined + 1):
                    expected[i] += 1
            for i, (_, mbox) in enumerate(boxes):
                await wait_for(lambda m=mbox, n=expected[i]: len(m) >= n, timeout=10)
        got = [await settled(mbox) for _, mbox in boxes]
        assert got == [[reign.MultipleClaim("dup")] * n for n in (2, 2, 1)]
        for node in nodes:
            assert node.names.multiple_claim_count == 1
            assert node.names.lookup("dup") == boxes[0][0]
        # A claimant that leaves and claims again is a new conflict: the others hear again.
        (a3, _) = boxes[2]
        nodes[2].names.unregister("dup", a3)
        nodes[2].names.register("dup", a3)
        got = [await asyncio.wait_for(mbox.receive(), 10) for _, mbox in boxes]
        assert got == [reign.MultipleClaim("dup")] * 3
        assert [await settled(mbox) for _, mbox in boxes] == [[], [], []]


async def test_close_and_unregister_remove_claims_everywhere(spec3: Path) -> None:
    async with running(spec3, [1, 2, 3]) as nodes:
        n1, n2, n3 = nodes
        a1, m1 = n1.new_mailbox()
        a2, _ = n2.new_mailbox()
        for name in ("p", "q", "r"):
            n1.names.register(name, a1)
        n2.names.register("q", a2)
        await sync_all(nodes)
        assert all(n.names.multiple_claim_count == 1 for n in nodes)
        m1.close()
        await n1.names.sync(timeout=10)
        for node in nodes:
            assert node.names.seen_names("p", "q", "r") == [False, True, False]
            assert node.names.lookup_all("q") == [a2] and node.names.multiple_claim_count == 0
        n2.names.unregister("q", a2)
        await n2.names.sync(timeout=10)
        assert [n.names.lookup("q") for n in nodes] == [None, None, None]
        # A node cannot unregister another node's claim.
        a3, _ = n3.new_mailbox()
        n3.names.register("s", a3)
        await n3.names.sync(timeout=10)
        n1.names.unregister("s", n1.address(str(a3)))
        await n1.names.sync(timeout=10)
        assert all(n.names.lookup("s") == a3 for n in nodes)


async def test_stopped_node_loses_its_claims_everywhere(spec3: Path) -> None:
    async with running(spec3, [1, 2, 3]) as (n1, n2, n3):
        a3, _ = n3.new_mailbox()
        a1, m1 = n1.new_mailbox()
        n3.names.register("gone", a3)
        n3.names.register("shared", a3)
        n1.names.register("shared", a1)
        await sync_all([n1, n3])
        assert await m1.receive(timeout=10) == reign.MultipleClaim("shared")
        await n3.stop()
        for node in (n1, n2):
            await wait_for(lambda node=node: node.names.seen_names("gone") == [False], timeout=10)
            assert node.names.lookup_all("shared") == ([a1])
            assert node.names.multiple_claim_count == 0


async def test_restarted_node_does_not_resurrect_old_claims(spec3: Path) -> None:
    async with running(spec3, [1, 2]) as (n1, n2):
        old = reign.create_from_spec_file(spec3, 3)
        async with old:
            await wait_connected([n1, n2, old])
            a_old, _ = old.new_mailbox()
            old.names.register("old", a_old)
            old.names.register("kept", a_old)
            await old.names.sync(timeout=10)
            assert n1.names.lookup("old") == a_old
        new = reign.create_from_spec_file(spec3, 3)
        async with new:
            assert new.incarnation != old.incarnation
            a_new, _ = new.new_mailbox()
            new.names.register("kept", a_new)
            await wait_connected([n1, n2, new])
            await new.names.sync(timeout=10)
            for node in (n1, n2, new):
                assert node.names.seen_names("old") == [False]
                assert node.names.lookup_all("kept") == [a_new]


_CHILD = """
import asyncio, sys
import reign

async def main(spec, node_id, names):
    node = reign.create_from_spec_file(spec, node_id)
    async with node:
        addr, _ = node.new_mailbox()
        for name in names:
            node.names.register(name, addr)
        print(f"ready {addr}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

reign.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
"""


class _Child:
    """Node ``node_id`` in its own process, claiming ``names`` with one mailbox."""

    def __init__(self, spec: Path, node_id: int, *names: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(spec), str(node_id), *names],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            text=True,
        )

    async def ready(self, node: reign.Node) -> reign.Address:
        def read() -> str:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("ready "):
                    return line[6:].strip()
            raise EOFError("child node exited before it was ready")

        text = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, read), 30)
        return node.address(text)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.slow
async def test_killed_node_loses_its_claims_and_its_restart_does_not_resurrect_them(
    spec3: Path,
) -> None:
    async with running(spec3, [1, 2]) as (n1, n2):
        a1, m1 = n1.new_mailbox()
        n1.names.register("contested", a1)
        child = _Child(spec3, 3, "old", "contested")
        try:
            old = await child.ready(n1)
            await wait_for(lambda: n1.names.lookup("old") == old and n2.names.lookup("old") == old)
            assert await m1.receive(timeout=10) == reign.MultipleClaim("contested")
            child.kill()  # kill -9: no goodbye, the peers learn it from the connection
            for node in (n1, n2):
                await wait_for(lambda node=node: not node.names.seen_names("old")[0], timeout=10)
                assert node.names.lookup_all("contested") == [a1]
        finally:
            child.kill()
        child = _Child(spec3, 3, "new", "contested")
        try:
            new = await child.ready(n1)
            assert new.id.incarnation != old.id.incarnation
            await wait_for(lambda: n1.names.seen_names("new") == n2.names.seen_names("new") == [True])
            await n1.names.sync(timeout=10)
            for node in (n1, n2):
                assert not node.names.seen_names("old")[0]
                assert ids(node.names.lookup_all("contested")) == [a1.id, new.id]
            # The new claimant is a new conflict for a1.
            assert await m1.receive(timeout=10) == reign.MultipleClaim("contested")
            assert await settled(m1) == []
        finally:
            child.kill()


def _abort(node: reign.Node, peer: int) -> None:
    """Drop the connection to ``peer`` abruptly; the dialling side reconnects on its own."""
    conn = node._cluster.peers[peer].conn  # type: ignore[attr-defined]
    assert conn is not None
    conn.abort()


def _status_log(node: reign.Node) -> list[tuple[int, bool]]:
    events: list[tuple[int, bool]] = []
    node.add_connection_status_callback(lambda peer, up: events.append((peer, up)))
    return events


async def test_partition_heal_notifies_claimants_on_both_sides_once(spec3: Path) -> None:
    async with running(spec3, [1, 2, 3]) as nodes:
        n1, n2, n3 = nodes
        a1, m1 = n1.new_mailbox()
        a2, m2 = n2.new_mailbox()
        ev1, ev2 = _status_log(n1), _status_log(n2)

        def claim_when_down(node: reign.Node, peer: int, addr: reign.Address) -> None:
            """Claim "split" the moment ``node`` sees ``peer`` go down: surely while apart."""

            def on_status(node_id: int, up: bool) -> None:
                if node_id == peer and not up and not node.names.seen_names("split")[0]:
                    node.names.register("split", addr)

            node.add_connection_status_callback(on_status)

        claim_when_down(n1, 2, a1)
        claim_when_down(n2, 1, a2)
        _abort(n1, 2)
        await wait_for(lambda: (2, False) in ev1 and (1, False) in ev2, timeout=10)
        await wait_for(lambda: ev1.count((2, True)) == 1 and ev2.count((1, True)) == 1, timeout=20)
        await wait_connected(nodes)
        await sync_all(nodes)
        assert await m1.receive(timeout=10) == reign.MultipleClaim("split")
        assert await m2.receive(timeout=10) == reign.MultipleClaim("split")
        assert await settled(m1) == [] and await settled(m2) == []
        for node in nodes:
            assert ids(node.names.lookup_all("split")) == [a1.id, a2.id]
            assert node.names.multiple_claim_count == 1

        # The same partition again, healing with the same claims: nobody is told twice.
        _abort(n1, 2)
        await wait_for(lambda: ev1.count((2, True)) == 2 and ev2.count((1, True)) == 2, timeout=20)
        await wait_connected(nodes)
        await sync_all(nodes)
        assert await settled(m1) == [] and await settled(m2) == []
        assert all(node.names.multiple_claim_count == 1 for node in nodes)
        assert n3.names.lookup("split") == n1.names.lookup("split") == n2.names.lookup("split") == a1


async def test_sync_waits_for_answers_and_times_out_on_a_silent_peer(spec3: Path) -> None:
    async with running(spec3, [1, 2, 3]) as (n1, n2, n3):
        names2 = n2.names
        handler = names2.control

        def deaf(peer: int, payload: object) -> None:  # node 2 ignores node 1's sync requests
            if not (peer == 1 and isinstance(payload, list) and payload[:1] == ["reg.sync"]):
                handler(peer, payload)

        names2.control = deaf  # type: ignore[method-assign]
        with capture_logs() as logs:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match=r"\[2\]"):
                await n1.names.sync(timeout=0.3)
            assert 0.25 < time.monotonic() - t0 < 5
        assert [e["event"] for e in logs if e["event"].startswith("names.sync")] == ["names.sync.timeout"]
        await n3.names.sync(timeout=10)  # nodes 1 and 2 still answer node 3

        # A peer lost while we wait counts as answered.
        waiter = asyncio.ensure_future(n1.names.sync(timeout=20))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        _abort(n1, 2)
        await asyncio.wait_for(waiter, 5)
        del names2.control  # type: ignore[method-assign]


async def test_malformed_registry_frames_close_only_that_connection(spec3: Path) -> None:
    async with running(spec3, [1, 2]) as (n1, n2):
        a2, _ = n2.new_mailbox()
        n2.names.register("n", a2)
        await n2.names.sync(timeout=10)
        events = _status_log(n2)
        with capture_logs() as logs:
            assert n1._cluster.send_control(2, ["reg.nonsense"])  # type: ignore[attr-defined]
            await wait_for(lambda: (1, False) in events, timeout=10)
        assert any(e["event"] == "peer.protocol_error" and "reg.nonsense" in e["reason"] for e in logs)
        await wait_for(lambda: (1, True) in events, timeout=20)  # redialled
        await wait_connected([n1, n2])
        await n2.names.sync(timeout=10)
        assert n1.names.lookup("n") == a2  # the new connection carried a fresh snapshot


async def test_snapshot_chunks_fit_a_small_frame_limit(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2], max_message_bytes=1024, net_ticktime=4)
    n1 = reign.create_from_spec_file(spec, 1)
    n2 = reign.create_from_spec_file(spec, 2)
    with capture_logs() as logs:
        async with n1:
            addr, mbox = n1.new_mailbox()
            long_names = [f"{i:04d}" + "é" * ((MAX_NAME_BYTES - 4) // 2) for i in range(200)]
            short_names = [f"s{i}" for i in range(500)]
            for name in long_names + short_names:
                n1.names.register(name, addr)
            async with n2:  # n2 learns all of them from n1's snapshot
                await wait_connected([n1, n2])
                await n1.names.sync(timeout=10)
                assert all(n2.names.seen_names(*long_names, *short_names))
                mbox.close()  # 700 removals in one go, cut to fit as well
                await n1.names.sync(timeout=10)
                assert not any(n2.names.seen_names(*long_names, *short_names))
    assert not [e for e in logs if e["event"] in ("peer.protocol_error", "peer.handshake.rejected")]


SNAPSHOT_NAMES = 20_000


async def test_large_snapshot_reaches_a_joining_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = make_cluster(tmp_path, [1, 2], net_ticktime=10)
    n1 = reign.create_from_spec_file(spec, 1)
    n2 = reign.create_from_spec_file(spec, 2)
    async with n1:
        boxes = [n1.new_mailbox()[0] for _ in range(100)]
        names = [f"service.{i:06d}" for i in range(SNAPSHOT_NAMES)]
        for i, name in enumerate(names):
            n1.names.register(name, boxes[i % len(boxes)])
        async with n2:
            a2, m2 = n2.new_mailbox()
            n2.names.register("service.000007", a2)  # a conflict inside the snapshot
            t0 = time.perf_counter()
            await wait_connected([n1, n2], timeout=30)
            await n1.names.sync(timeout=30)
            elapsed = time.perf_counter() - t0
            assert all(n2.names.seen_names(*names))
            assert n2.names.lookup(names[-1]) == boxes[(SNAPSHOT_NAMES - 1) % len(boxes)]
            assert n2.names.multiple_claim_count == n1.names.multiple_claim_count == 1
            assert await m2.receive(timeout=10) == reign.MultipleClaim("service.000007")
    with capsys.disabled():
        print(f"\n{SNAPSHOT_NAMES} names: connect + snapshot + sync in {elapsed * 1000:.0f} ms")


async def test_wait_for_wakes_on_a_peers_registration(spec3: Path) -> None:
    async with running(spec3, [1, 2]) as (n1, n2):
        waiter = asyncio.ensure_future(n2.names.wait_for("late", timeout=10))
        local = asyncio.ensure_future(n1.names.wait_for("late", timeout=10))
        await asyncio.sleep(0.05)
        assert not waiter.done() and not local.done()
        addr, _ = n1.new_mailbox()
        n1.names.register("late", addr)
        assert await local == addr  # woken by the local registration
        assert await waiter == n2.address(str(addr))  # woken by the peer's change frame
        with pytest.raises(TimeoutError):
            await n2.names.wait_for("never", timeout=0.05)
        assert n2.names._name_waiters == {}
