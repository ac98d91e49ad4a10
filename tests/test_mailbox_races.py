"""Delivery while a predicate runs arbitrary code, and the fast paths pinned to the slow ones.

Issue 13, item 5: a ``receive_match`` predicate that closes its own mailbox made the delivery
set a result on a future ``close()`` had already failed (``InvalidStateError``): a local send
raised, and a remote one was caught as ``peer.internal_error``, dropping the whole connection
(a bystander's watch fired falsely, the node's names vanished). The fix is at the root
(delivery re-checks the waiter and the mailbox after every predicate call), so these tests
drive predicates that close, send to, receive from and cancel their own mailbox and task.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import reign
from reign.testing import make_cluster

from cluster_util import drain


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
async def node() -> Any:
    async with reign.no_clustering() as n:
        yield n


async def test_a_predicate_that_closes_its_mailbox_does_not_break_the_sender(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()

    def closing(msg: Any) -> bool:
        mbox.close("done")
        return True

    waiter = asyncio.ensure_future(mbox.receive_match(closing))
    await settle()
    assert addr.send("trigger") is True  # delivered into a mailbox that closed meanwhile: no raise
    with pytest.raises(reign.MailboxClosedError):
        await asyncio.wait_for(waiter, 5)
    assert mbox.closed and mbox.reason == "done"
    assert addr.send("after") is False


async def test_a_predicate_that_closes_its_mailbox_on_a_queued_message(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    addr.send("queued")

    def closing(msg: Any) -> bool:
        mbox.close()
        return True

    with pytest.raises(reign.MailboxClosedError):
        await mbox.receive_match(closing, timeout=5)


async def test_a_predicate_that_sends_to_its_own_mailbox_keeps_every_message(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    seen: list[Any] = []

    def echoing(msg: Any) -> bool:
        seen.append(msg)
        if msg == "first":
            addr.send("from the predicate")  # re-entrant delivery
        return msg == "wanted"

    waiter = asyncio.ensure_future(mbox.receive_match(echoing))
    await settle()
    addr.send("first")
    addr.send("wanted")
    assert await asyncio.wait_for(waiter, 5) == "wanted"
    assert drain(mbox) == ["first", "from the predicate"]  # nothing lost, order kept
    assert seen[0] == "first"


async def test_a_predicate_that_receives_from_its_own_mailbox(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    for m in ("a", "b", "c"):
        addr.send(m)
    taken: list[Any] = []

    def greedy(msg: Any) -> bool:
        if msg == "a":
            taken.append(mbox.receive_nowait())  # takes "a" itself out of the queue
        return msg in ("a", "c")

    assert await mbox.receive_match(greedy, timeout=5) == "c"  # "a" was taken by the predicate
    assert taken == ["a"] and drain(mbox) == ["b"]


async def test_a_predicate_that_cancels_its_own_task_loses_no_message(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    task: asyncio.Task[Any] | None = None

    def cancelling(msg: Any) -> bool:
        assert task is not None
        task.cancel()
        return True

    task = asyncio.ensure_future(mbox.receive_match(cancelling))
    await settle()
    addr.send("kept")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert drain(mbox) == ["kept"]


async def test_a_predicate_closing_its_mailbox_on_a_remote_message_keeps_the_connection(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2])
    with capture_logs() as logs:
        async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
            await n1.wait_connected(2, timeout=20)
            target, tbox = n2.new_mailbox()
            bystander, bbox = n2.new_mailbox()
            watcher, wbox = n1.new_mailbox()
            n1.address(str(bystander)).on_close_notify(watcher)
            n2.names.register("still.here", bystander)
            await n2.names.sync(timeout=10)

            def closing(msg: Any) -> bool:
                tbox.close("closed by its predicate")
                return True

            waiter = asyncio.ensure_future(tbox.receive_match(closing))
            await settle()
            assert n1.address(str(target)).send("over the wire") is True
            with pytest.raises(reign.MailboxClosedError):
                await asyncio.wait_for(waiter, 10)
            # the connection survived: a round trip, the bystander's watch and names are intact
            n1.address(str(bystander)).send("ping")
            assert await bbox.receive(timeout=10) == "ping"
            assert n1.names.lookup("still.here") == bystander
            assert len(wbox) == 0
            assert n1.statistics().peers[2].connects == 1
    events = [e["event"] for e in logs]
    assert "peer.internal_error" not in events and "peer.protocol_error" not in events


# ------------------------------------------------------------------ fast paths pinned to slow ones


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send", "receive", "match", "wait", "wait_match", "settle"]),
                          st.integers(0, 5)), max_size=30))
def test_post_equals_the_loop_binding_dispatch(script: list[tuple[str, int]]) -> None:
    """``Mailbox.post`` inlines ``LoopBinding.call``'s on-the-loop case and ``deliver``'s two
    common cases (queue without waiters, a plain waiting receiver): the same script of sends,
    receives and waiting receivers gives the same messages and results through either path."""

    async def run(use_post: bool) -> list[Any]:
        node = reign.no_clustering()
        addr, mbox = node.new_mailbox()
        out: list[Any] = []
        waiting: list[asyncio.Future[Any]] = []
        for op, value in script:
            if op == "send":
                out.append(mbox.post(value) if use_post else node.binding.call(mbox.deliver, value))
            elif op in ("receive", "match"):
                try:
                    if op == "receive":
                        out.append(await mbox.receive(timeout=0))
                    else:
                        out.append(await mbox.receive_match(lambda m, v=value: m == v, timeout=0))
                except TimeoutError:
                    out.append("timeout")
            elif op == "wait":
                waiting.append(asyncio.ensure_future(mbox.receive()))
            elif op == "wait_match":
                waiting.append(asyncio.ensure_future(mbox.receive_match(lambda m, v=value: m == v)))
            else:
                await settle()
        await settle()
        out.append([w.result() if w.done() else "pending" for w in waiting])
        out.append(drain(mbox))
        await node.stop()
        for w in waiting:
            w.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        return out

    async def both() -> tuple[list[Any], list[Any]]:
        return await run(True), await run(False)

    fast, slow = reign.run(both())
    assert fast == slow
