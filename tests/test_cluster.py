"""The node connector over real TLS on loopback: several nodes in one process (same loop)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import reign
from reign._core import codec as _codec
from reign._core import frames as _wire

from cluster_util import CA, drain, listen_address, make_cluster, raw_peer, wait_connected, wait_for, write_key


@reign.register_type(name="test.Chat")
@dataclass(frozen=True)
class Chat:
    text: str
    sender: reign.Address


class Unregistered:
    pass


@pytest.fixture
def spec3(tmp_path: Path) -> Path:
    return make_cluster(tmp_path, [1, 2, 3], net_ticktime=4)


async def test_two_nodes_exchange_messages_both_ways(spec3: Path) -> None:
    async with reign.create_from_spec_file(spec3, 1) as n1, reign.create_from_spec_file(spec3, 2) as n2:
        await wait_connected([n1, n2])
        a1, m1 = n1.new_mailbox()
        a2, m2 = n2.new_mailbox()
        remote_a2 = n1.address(str(a2))
        assert remote_a2.send(("hello", a1)) is True
        msg, reply_to = await m2.receive(timeout=10)
        assert msg == "hello" and reply_to == a1
        assert reply_to._router is n2  # decoded addresses are bound to the receiving node
        assert reply_to.send({"answer": 42, "list": [1, 2.5, None, True, b"x"]}) is True
        assert await m1.receive(timeout=10) == {"answer": 42, "list": [1, 2.5, None, True, b"x"]}


async def test_three_nodes_full_mesh(spec3: Path) -> None:
    nodes = [reign.create_from_spec_file(spec3, i) for i in (1, 2, 3)]
    for n in nodes:
        await n.start()
    try:
        await wait_connected(nodes)
        boxes = [n.new_mailbox() for n in nodes]
        for i, n in enumerate(nodes):
            for j, (addr, _) in enumerate(boxes):
                if i != j:
                    assert n.address(bytes(addr)).send((n.id, "to", j)) is True
        for j, (_, mbox) in enumerate(boxes):
            got = sorted([await mbox.receive(timeout=10) for _ in range(2)])
            assert got == sorted((n.id, "to", j) for i, n in enumerate(nodes) if i != j)
    finally:
        for n in nodes:
            await n.stop()


async def test_registered_types_and_addresses_round_trip(spec3: Path) -> None:
    async with reign.create_from_spec_file(spec3, 1) as n1, reign.create_from_spec_file(spec3, 2) as n2:
        await wait_connected([n1, n2])
        a1, m1 = n1.new_mailbox()
        a2, m2 = n2.new_mailbox()
        n1.address(str(a2)).send(Chat("hi", a1))
        got = await m2.receive(timeout=10)
        assert got == Chat("hi", a1) and isinstance(got, Chat)
        got.sender.send(("back", (1, 2)))  # the address inside the message works over there
        assert await m1.receive(timeout=10) == ("back", (1, 2))


async def test_unsendable_message_raises_in_the_caller(spec3: Path) -> None:
    async with reign.create_from_spec_file(spec3, 1) as n1, reign.create_from_spec_file(spec3, 2) as n2:
        await wait_connected([n1, n2])
        a2, m2 = n2.new_mailbox()
        remote = n1.address(str(a2))
        with pytest.raises(reign.EncodeError):
            remote.send(Unregistered())
        with pytest.raises(reign.EncodeError):
            remote.send({1, 2})
        remote.send("after")
        assert await m2.receive(timeout=10) == "after"


async def test_oversized_message_raises_encode_error(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2], max_message_bytes=4096)
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await wait_connected([n1, n2])
        a2, m2 = n2.new_mailbox()
        with pytest.raises(reign.EncodeError, match="max_message_bytes"):
            n1.address(str(a2)).send(b"x" * 5000)
        n1.address(str(a2)).send(b"y" * 4000)
        assert await m2.receive(timeout=10) == b"y" * 4000


async def test_twenty_thousand_messages_keep_order(spec3: Path) -> None:
    async with reign.create_from_spec_file(spec3, 1) as n1, reign.create_from_spec_file(spec3, 2) as n2:
        await wait_connected([n1, n2])
        a2, m2 = n2.new_mailbox()
        remote = n1.address(str(a2))
        for i in range(20_000):
            remote.send(i)
            if i % 2000 == 0:
                await asyncio.sleep(0)
        got = [await m2.receive(timeout=20) for _ in range(20_000)]
        assert got == list(range(20_000))
        stats = n1.statistics().peers[2]
        assert stats.messages_out == 20_000 and n2.statistics().peers[1].messages_in == 20_000


async def test_messages_sent_before_the_peer_is_up_are_delivered_in_order(spec3: Path) -> None:
    n1 = reign.create_from_spec_file(spec3, 1)
    n2 = reign.create_from_spec_file(spec3, 2)
    await n2.start()
    try:
        a2, m2 = n2.new_mailbox()
        remote = n1.address(str(a2))
        for i in range(100):
            assert remote.send(i) is True  # n1 is not even started
        assert n1.statistics().peers[2].queued_messages == 100
        await n1.start()
        assert [await m2.receive(timeout=10) for _ in range(100)] == list(range(100))
    finally:
        await n1.stop()
        await n2.stop()


async def test_pending_overflow_is_refused_and_counted(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2], pending_messages=10)
    n1 = reign.create_from_spec_file(spec, 1)
    async with n1:
        target = n1.address("<2.5.1>")
        with capture_logs() as logs:
            results = [target.send(i) for i in range(15)]
        assert results == [True] * 10 + [False] * 5
        stats = n1.statistics().peers[2]
        assert stats.queued_messages == 10 and stats.dropped_messages == 5
        assert [e["event"] for e in logs].count("peer.pending.overflow") == 1


async def test_remote_close_notify(spec3: Path) -> None:
    async with reign.create_from_spec_file(spec3, 1) as n1, reign.create_from_spec_file(spec3, 2) as n2:
        await wait_connected([n1, n2])
        watcher, wbox = n1.new_mailbox()
        target, tbox = n2.new_mailbox()
        remote_target = n1.address(str(target))
        remote_target.on_close_notify(watcher)
        remote_target.on_close_notify(watcher)
        await asyncio.sleep(0.1)
        tbox.close()
        assert await wbox.receive(timeout=10) == reign.MailboxClosed(target.id)
        with pytest.raises(TimeoutError):
            await wbox.receive(timeout=0.2)
        # notify on an already closed remote mailbox comes back at once
        remote_target.on_close_notify(watcher)
        assert await wbox.receive(timeout=10) == reign.MailboxClosed(target.id, "noproc")


async def test_remove_notify_remote(spec3: Path) -> None:
    async with reign.create_from_spec_file(spec3, 1) as n1, reign.create_from_spec_file(spec3, 2) as n2:
        await wait_connected([n1, n2])
        watcher, wbox = n1.new_mailbox()
        target, tbox = n2.new_mailbox()
        remote_target = n1.address(str(target))
        remote_target.on_close_notify(watcher)
        remote_target.remove_notify(watcher)
        await asyncio.sleep(0.1)
        tbox.close()
        with pytest.raises(TimeoutError):
            await wbox.receive(timeout=0.3)


async def test_node_loss_notifies_watchers_and_reconnect_restores(spec3: Path) -> None:
    n1 = reign.create_from_spec_file(spec3, 1)
    n2 = reign.create_from_spec_file(spec3, 2)
    events: list[tuple[int, bool]] = []
    n1.add_connection_status_callback(lambda node_id, up: events.append((node_id, up)))
    await n1.start()
    await n2.start()
    try:
        await wait_connected([n1, n2])
        watcher, wbox = n1.new_mailbox()
        target, _ = n2.new_mailbox()
        remote_target = n1.address(str(target))
        remote_target.on_close_notify(watcher)
        await asyncio.sleep(0.05)
        await n2.stop()
        assert await wbox.receive(timeout=10) == reign.MailboxClosed(target.id, "shutdown")  # sent before its node left
        # registered while the node is down: notified at once
        remote_target.on_close_notify(watcher)
        assert await wbox.receive(timeout=1) == reign.MailboxClosed(target.id, "noconnection")
        await wait_for(lambda: events[-1:] == [(2, False)])
        # a new incarnation of node 2 comes up; the old address stays gone
        n2b = reign.create_from_spec_file(spec3, 2)
        async with n2b:
            await wait_connected([n1, n2b])
            assert remote_target.send("to the old incarnation") is False
            a2b, m2b = n2b.new_mailbox()
            n1.address(str(a2b)).send("to the new one")
            assert await m2b.receive(timeout=10) == "to the new one"
            assert events.count((2, True)) == 2
    finally:
        await n1.stop()


async def test_sixteen_node_mesh(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, range(16), net_ticktime=20)
    nodes = [reign.create_from_spec_file(spec, i) for i in range(16)]
    await asyncio.gather(*(n.start() for n in nodes))
    try:
        await wait_connected(nodes, timeout=60)
        boxes = [n.new_mailbox() for n in nodes]
        for n in nodes:
            for addr, _ in boxes:
                n.address(str(addr)).send(n.id)
        for _, mbox in boxes:
            assert sorted([await mbox.receive(timeout=20) for _ in range(16)]) == list(range(16))
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


# ---------------------------------------------------------------- hostile and misconfigured peers


async def _assert_never_up(n1: reign.Node, peer: int, seconds: float = 1.5) -> None:
    await asyncio.sleep(seconds)
    assert n1.statistics().peers[peer].state != "up"
    assert n1.statistics().peers[peer].connects == 0


async def test_foreign_ca_node_never_comes_up(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path / "good", [1, 2])
    CA(tmp_path / "evil").issue(2, tmp_path / "good")  # node 2's files now come from another CA
    (tmp_path / "good" / "reign_ca.crt").write_bytes((tmp_path / "evil" / "reign_ca.crt").read_bytes())
    # ...but node 1 keeps trusting the real CA: rebuild node 1 from a spec copy with the real CA
    good = tmp_path / "real"
    good.mkdir()
    ca = CA(good)
    ca.issue(1)
    import json

    data = json.loads(spec.read_text())
    (good / "cluster.json").write_text(json.dumps(data))
    with capture_logs() as logs:
        n1 = reign.create_from_spec_file(good / "cluster.json", 1)
        n2 = reign.create_from_spec_file(spec, 2)
        async with n1, n2:
            a1, m1 = n1.new_mailbox()
            n2.address(str(a1)).send("must not arrive")
            await _assert_never_up(n1, 2)
            assert len(m1) == 0
    assert any(e["event"] in ("node.tls.rejected", "peer.dial.failed") for e in logs)


async def test_certificate_of_another_node_is_rejected(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2, 3])
    # node 2 uses node 3's certificate and key
    (tmp_path / "reign_node.2.crt").write_bytes((tmp_path / "reign_node.3.crt").read_bytes())
    write_key(tmp_path / "reign_node.2.key", (tmp_path / "reign_node.3.key").read_bytes())
    data = reign.ClusterSpec.load(spec)
    with pytest.raises(reign.ClusterSpecError, match="node 3"):
        reign.create_from_spec(data, 2)  # caught locally before anything is sent
    # forced past the local check, the peer still refuses it
    n2 = reign.Node(2, data, credentials=data.load_credentials(2, verify=False))
    with capture_logs() as logs:
        async with reign.create_from_spec_file(spec, 1) as n1, n2:
            await _assert_never_up(n1, 2)
    rejected = [e for e in logs if e["event"] == "peer.handshake.rejected"]
    assert rejected and "proves node 3" in rejected[0]["reason"]


async def test_client_without_certificate_is_rejected(spec3: Path) -> None:
    with capture_logs() as logs:
        async with reign.create_from_spec_file(spec3, 2) as n2:
            host, port = listen_address(n2)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            data = await asyncio.wait_for(reader.read(100), 10)  # TLS 1.3: the refusal comes late
            assert data == b""
            writer.close()
            await asyncio.sleep(0.1)
    assert any(e["event"] == "node.tls.rejected" for e in logs)


async def test_junk_and_stalled_handshakes_do_not_disturb(spec3: Path) -> None:
    async with reign.create_from_spec_file(spec3, 2) as n2:
        host, port = listen_address(n2)
        stalled = []
        for _ in range(20):
            s = socket.create_connection((host, port))
            stalled.append(s)
        junk = socket.create_connection((host, port))
        junk.sendall(b"\x00" * 1000 + b"GET / HTTP/1.0\r\n\r\n")
        async with reign.create_from_spec_file(spec3, 1) as n1:
            await wait_connected([n1, n2])
            a2, m2 = n2.new_mailbox()
            n1.address(str(a2)).send("still works")
            assert await m2.receive(timeout=10) == "still works"
        for s in stalled + [junk]:
            s.close()


async def test_oversized_frame_closes_only_that_connection(spec3: Path, tmp_path: Path) -> None:
    """An authenticated peer (node 1's real certificate) announces a 2**31-byte frame."""
    async with reign.create_from_spec_file(spec3, 2) as n2:
        reader, writer, _ = await raw_peer(spec3, 1, n2)
        with capture_logs() as logs:
            writer.write((2**31).to_bytes(4, "big") + bytes([_wire.FrameType.MESSAGE]))
            await writer.drain()
            await wait_for(lambda: n2.statistics().peers[1].state == "down")
            while await asyncio.wait_for(reader.read(65536), 10):
                pass  # whatever node 2 had queued, then EOF: it closed the connection
        assert any(e["event"] == "peer.protocol_error" for e in logs)
        writer.close()
        # the node still serves a legitimate peer
        async with reign.create_from_spec_file(spec3, 3) as n3:
            await wait_connected([n2, n3])


async def test_silent_peer_is_declared_down_by_ticks(tmp_path: Path) -> None:
    spec_path = make_cluster(tmp_path, [1, 2], net_ticktime=1)
    async with reign.create_from_spec_file(spec_path, 2) as n2:
        reader, writer, _ = await raw_peer(spec_path, 1, n2)
        watcher, wbox = n2.new_mailbox()
        n2.address("<1.7.1>").on_close_notify(watcher)
        # we now say nothing at all (no ticks): node 2 must notice within ~net_ticktime
        assert await wbox.receive(timeout=10) == reign.MailboxClosed(reign.MailboxID(1, 7, 1), "noconnection")
        assert n2.statistics().peers[1].state == "down"
        writer.close()


async def test_statistics_and_wait_drained(spec3: Path) -> None:
    async with reign.create_from_spec_file(spec3, 1) as n1, reign.create_from_spec_file(spec3, 2) as n2:
        await wait_connected([n1, n2])
        a2, m2 = n2.new_mailbox()
        remote = n1.address(str(a2))
        for _ in range(200):
            remote.send(b"z" * 65536)  # 13 MB: above the high-water mark
            await n1.wait_drained(2, timeout=20)
        await n1.wait_drained(timeout=20)
        for _ in range(200):
            assert await m2.receive(timeout=20) == b"z" * 65536
        stats = n1.statistics()
        assert stats.node == 1 and stats.peers[2].state == "up" and stats.peers[3].state == "connecting"
        assert stats.peers[2].last_heard is not None and stats.peers[2].last_heard < 30
        with pytest.raises(KeyError):
            await n1.wait_drained(99)


async def test_wait_drained_without_timeout_returns_after_a_large_burst(spec3: Path) -> None:
    # Regression: the TLS transport never called pause/resume_writing, so a waiter that saw
    # the burst above the high-water mark waited forever.
    async with reign.create_from_spec_file(spec3, 1) as n1, reign.create_from_spec_file(spec3, 2) as n2:
        await wait_connected([n1, n2])
        a2, m2 = n2.new_mailbox()
        remote = n1.address(str(a2))
        for _ in range(1100):  # 4.5 MB in one loop iteration: above the 4 MiB mark
            remote.send(b"q" * 4096)
        assert n1.statistics().peers[2].queued_bytes > 4 * 1024 * 1024
        async with asyncio.timeout(20):  # in this task: the flush has not run yet
            await n1.wait_drained(2)
        for _ in range(1100):
            assert await m2.receive(timeout=20) == b"q" * 4096


async def test_stop_ends_pending_sync_and_later_sends_are_refused(spec3: Path) -> None:
    # Found in review: sync() waited forever across stop(), and sends after stop piled up.
    n1 = reign.create_from_spec_file(spec3, 1)
    n2 = reign.create_from_spec_file(spec3, 2)
    events: list[tuple[int, bool]] = []
    n1.add_connection_status_callback(lambda node_id, up: events.append((node_id, up)))
    await n1.start()
    await n2.start()
    try:
        await wait_connected([n1, n2])
        a2, _ = n2.new_mailbox()
        remote = n1.address(str(a2))
        class Deaf:  # node 2's registry never answers syncs
            def peer_up(self, peer: int, incarnation: int) -> None: ...
            def peer_down(self, peer: int) -> None: ...
            def control(self, peer: int, payload: object) -> None: ...

        n2._cluster.listeners[:] = [Deaf()]
        waiter = asyncio.ensure_future(n1.names.sync(timeout=None))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await n1.stop()
        await asyncio.wait_for(waiter, 5)  # the peers are gone: nothing left to wait for
        assert (2, False) in events
        assert [remote.send(i) for i in range(3)] == [False] * 3
        assert n1.statistics().peers[2].queued_messages == 0
    finally:
        await n1.stop()
        await n2.stop()


async def test_undecodable_message_for_a_closed_mailbox_is_dropped_unread(spec3: Path) -> None:
    # Review: the batch decoder must not turn a message for a gone mailbox into a lost link.
    async with reign.create_from_spec_file(spec3, 2) as n2:
        reader, writer, wire = await raw_peer(spec3, 1, n2)
        gone, gone_box = n2.new_mailbox()
        live, live_box = n2.new_mailbox()
        gone_box.close()
        writer.write(wire.message(gone.id, b"\xff\xff garbage") + wire.message(live.id, b"\x05"))
        assert await live_box.receive(timeout=10) == 5
        assert n2.statistics().peers[1].state == "up"
        writer.write(wire.message(live.id, b"\xff\xff garbage"))  # to a live one: protocol error
        await wait_for(lambda: n2.statistics().peers[1].state == "down")
        writer.close()


async def test_messages_before_a_bad_payload_in_one_read_are_delivered_once_in_order(
    spec3: Path,
) -> None:
    async with reign.create_from_spec_file(spec3, 2) as n2:
        reader, writer, wire = await raw_peer(spec3, 1, n2)
        live, live_box = n2.new_mailbox()
        watched, _ = n2.new_mailbox()
        good = [wire.message(live.id, _codec.encode(("m", i))) for i in range(3)]
        writer.write(good[0] + good[1] + wire.monitor(watched.id) + wire.message(live.id, b"\xff") + good[2])
        await wait_for(lambda: n2.statistics().peers[1].state == "down")
        assert drain(live_box) == [("m", 0), ("m", 1)]
        writer.close()


async def test_one_read_of_many_message_runs_is_decoded_from_one_stream(
    spec3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages interleaved with other frames come as many runs sharing one read: the batch
    decoder starts once per read, not once per run (which re-copied and re-scanned the read)."""
    from reign._core.codec import BatchDecoder

    starts: list[int] = []
    original = BatchDecoder.start

    def counting_start(self: BatchDecoder, data: bytes) -> object:
        starts.append(len(data))
        return original(self, data)

    monkeypatch.setattr(BatchDecoder, "start", counting_start)
    async with reign.create_from_spec_file(spec3, 2) as n2:
        reader, writer, wire = await raw_peer(spec3, 1, n2)
        box_address, box = n2.new_mailbox()
        chunk = b"".join(wire.message(box_address.id, _codec.encode(i)) + wire.tick() for i in range(500))
        starts.clear()
        writer.write(chunk)
        await wait_for(lambda: len(box) == 500)
        assert drain(box) == list(range(500))
        assert len(starts) < 50  # one per read of the 500 runs (a few reads at most)
        assert n2.statistics().peers[1].state == "up"
        writer.close()


async def test_watch_made_before_the_first_connection_waits_for_it(spec3: Path) -> None:
    # Review: a monitor set up while the mesh forms fired at once for a live mailbox.
    n2 = reign.create_from_spec_file(spec3, 2)
    await n2.start()
    n1 = reign.create_from_spec_file(spec3, 1)
    try:
        target, tbox = n2.new_mailbox()
        stale = reign.MailboxID(2, n2.incarnation - 1, 1)
        watcher, wbox = n1.new_mailbox()
        n1.address(str(target)).on_close_notify(watcher)  # node 1 has not even started
        n1.address(str(stale)).on_close_notify(watcher)
        assert len(wbox) == 0
        await n1.start()
        await wait_connected([n1, n2])
        assert await wbox.receive(timeout=10) == reign.MailboxClosed(stale, "noproc")  # other incarnation
        await asyncio.sleep(0.1)
        assert len(wbox) == 0  # the live one is still watched, not reported closed
        tbox.close()
        assert await wbox.receive(timeout=10) == reign.MailboxClosed(target.id)
    finally:
        await n1.stop()
        await n2.stop()


async def test_a_node_never_reached_in_its_first_net_ticktime_counts_as_down(tmp_path: Path) -> None:
    """Watches and links waiting for a first connection end with noconnection once the peer
    has not come up for net_ticktime (Erlang: a node that cannot be reached); it still joins
    when it comes, and messages buffered for it are delivered then."""
    spec = make_cluster(tmp_path, [1, 2], net_ticktime=1)
    n1 = reign.create_from_spec_file(spec, 1)
    await n1.start()
    try:
        watcher, wbox = n1.new_mailbox()
        absent = n1.address("<2.7.1>")
        absent.on_close_notify(watcher)
        linked_addr, linked = n1.new_mailbox()
        linked.trap_exits = True
        linked.link(absent)
        assert n1.statistics().peers[2].state == "connecting"
        assert await wbox.receive(timeout=10) == reign.MailboxClosed(absent.id, "noconnection")
        assert await linked.receive(timeout=10) == reign.Exit(absent.id, "noconnection")
        assert n1.statistics().peers[2].state == "down"
        absent.on_close_notify(watcher)  # now at once
        assert wbox.receive_nowait() == reign.MailboxClosed(absent.id, "noconnection")
        async with reign.create_from_spec_file(spec, 2) as n2:
            await n1.wait_connected(2, timeout=20)
            target, tbox = n2.new_mailbox()
            n1.address(str(target)).send("it came after all")
            assert await tbox.receive(timeout=10) == "it came after all"
    finally:
        await n1.stop()
