"""Mailbox and Address behaviour on a no_clustering() node (API.md "Mailboxes and addresses")."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading

import pytest

import reign


@pytest.fixture
async def node():
    n = reign.no_clustering()
    async with n:
        yield n


async def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- addresses


async def test_new_mailbox_pairs_address_and_mailbox(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    assert mbox.address == addr
    assert addr.id.node == node.id == 0
    assert addr.id.incarnation == node.incarnation
    other, _ = node.new_mailbox()
    assert other != addr and other.id.serial != addr.id.serial


async def test_address_round_trips_through_text_and_bytes(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    for form in (str(addr), bytes(addr)):
        parsed = node.address(form)
        assert parsed == addr and hash(parsed) == hash(addr)
        assert parsed.send(("via", form)) is True
    assert mbox.receive_nowait() == ("via", str(addr))
    assert mbox.receive_nowait() == ("via", bytes(addr))


async def test_address_is_hashable_immutable_and_never_pickled(node: reign.Node) -> None:
    addr, _ = node.new_mailbox()
    assert {addr: "x"}[node.address(str(addr))] == "x"
    with pytest.raises(AttributeError):
        addr.id = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        pickle.dumps(addr)
    assert repr(addr) == f"Address({addr.id})"


async def test_bad_address_text_raises(node: reign.Node) -> None:
    with pytest.raises(reign.IllegalAddressFormatError):
        node.address("<1.2>")


async def test_send_to_closed_mailbox_returns_false(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    mbox.close()
    assert addr.send("x") is False
    assert node.address(str(addr)).send("x") is False


async def test_send_to_stale_incarnation_returns_false(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    stale = node.address(f"<0.{node.incarnation + 1}.{addr.id.serial}>")
    assert stale.send("x") is False
    assert len(mbox) == 0


async def test_send_to_unknown_serial_or_other_node_returns_false(node: reign.Node) -> None:
    assert node.address(f"<0.{node.incarnation}.999999>").send("x") is False
    assert node.address("<5.1.1>").send("x") is False


# ---------------------------------------------------------------- receiving


async def test_receive_is_fifo_and_len_is_exact(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    for i in range(100):
        assert addr.send(i)
    assert len(mbox) == 100
    assert [await mbox.receive() for _ in range(100)] == list(range(100))
    assert len(mbox) == 0


async def test_receive_waits_for_a_message(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    task = asyncio.create_task(mbox.receive())
    await settle()
    assert not task.done()
    addr.send("hello")
    assert await asyncio.wait_for(task, 5) == "hello"


async def test_receive_nowait(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    with pytest.raises(reign.Empty):
        mbox.receive_nowait()
    addr.send(1)
    assert mbox.receive_nowait() == 1


async def test_receive_timeout(node: reign.Node) -> None:
    _, mbox = node.new_mailbox()
    with pytest.raises(TimeoutError):
        await mbox.receive(timeout=0.01)
    with pytest.raises(TimeoutError):
        await mbox.receive_match(lambda m: True, timeout=0.01)


async def test_zero_and_negative_timeouts_check_once(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    for timeout in (0, -1):
        with pytest.raises(TimeoutError):
            await mbox.receive(timeout=timeout)
        with pytest.raises(TimeoutError):
            await mbox.receive_match(lambda m: True, timeout=timeout)
    addr.send("ready")
    assert await mbox.receive(timeout=0) == "ready"
    addr.send("ready2")
    assert await mbox.receive_match(lambda m: m == "ready2", timeout=0) == "ready2"


async def test_timed_out_receive_does_not_steal_later_message(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    with pytest.raises(TimeoutError):
        await mbox.receive(timeout=0.01)
    addr.send("later")
    assert len(mbox) == 1
    assert mbox.receive_nowait() == "later"


async def test_receive_match_keeps_order_of_others(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    for i in range(10):
        addr.send(i)
    assert await mbox.receive_match(lambda m: m == 5) == 5
    assert await mbox.receive_match(lambda m: m % 2 == 1) == 1
    assert [mbox.receive_nowait() for _ in range(len(mbox))] == [0, 2, 3, 4, 6, 7, 8, 9]


async def test_waiting_receive_match_tests_each_message_once(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    for i in range(1000):
        addr.send(("noise", i))
    tested: list[object] = []

    def wanted(msg: object) -> bool:
        tested.append(msg)
        return msg == "wanted"

    task = asyncio.create_task(mbox.receive_match(wanted))
    await settle()
    assert len(tested) == 1000
    for i in range(1000, 1010):
        addr.send(("noise", i))
        await settle(1)
    addr.send("wanted")
    assert await asyncio.wait_for(task, 5) == "wanted"
    assert len(tested) == 1011  # backlog once, then each arrival once: never a rescan
    assert len(tested) == len({repr(m) for m in tested})
    assert len(mbox) == 1010


async def test_predicate_error_reaches_caller_and_message_stays(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    addr.send("boom")

    def pred(msg: object) -> bool:
        raise ValueError(f"cannot judge {msg}")

    with pytest.raises(ValueError, match="cannot judge boom"):
        await mbox.receive_match(pred)
    assert len(mbox) == 1

    def pred_on_new(msg: object) -> bool:
        if msg == "boom":
            return False
        raise ValueError(f"cannot judge {msg}")

    task = asyncio.create_task(mbox.receive_match(pred_on_new))
    await settle()
    addr.send("bang")
    with pytest.raises(ValueError, match="cannot judge bang"):
        await asyncio.wait_for(task, 5)
    assert [mbox.receive_nowait(), mbox.receive_nowait()] == ["boom", "bang"]


async def test_concurrent_receivers_get_distinct_messages(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    tasks = [asyncio.create_task(mbox.receive()) for _ in range(10)]
    await settle()
    for i in range(10):
        addr.send(i)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert sorted(results) == list(range(10))


async def test_selective_and_plain_receivers_share_arrivals(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    evens = asyncio.create_task(mbox.receive_match(lambda m: m % 2 == 0))
    anything = asyncio.create_task(mbox.receive())
    await settle()
    addr.send(1)
    addr.send(2)
    assert await asyncio.wait_for(evens, 5) == 2
    assert await asyncio.wait_for(anything, 5) == 1
    assert len(mbox) == 0


async def test_async_for_ends_when_closed(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    got: list[int] = []

    async def consume() -> None:
        async for msg in mbox:
            got.append(msg)
            if msg == 2:
                mbox.close()

    for i in range(5):
        addr.send(i)
    await asyncio.wait_for(consume(), 5)
    assert got == [0, 1, 2]


# ---------------------------------------------------------------- cancellation


async def test_cancelled_receive_loses_no_message(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    task = asyncio.create_task(mbox.receive())
    await settle()
    addr.send("first")  # handed to the waiting task...
    task.cancel()  # ...which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await task
    addr.send("second")
    assert [mbox.receive_nowait(), mbox.receive_nowait()] == ["first", "second"]


async def test_cancelled_receive_match_puts_message_back_in_place(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    addr.send("a")
    addr.send("b")
    task = asyncio.create_task(mbox.receive_match(lambda m: m == "x"))
    await settle()
    addr.send("x")
    addr.send("c")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [mbox.receive_nowait() for _ in range(len(mbox))] == ["a", "b", "x", "c"]


async def test_cancelled_receive_match_position_survives_other_takes(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    for m in ("a", "b", "c"):
        addr.send(m)
    task = asyncio.create_task(mbox.receive_match(lambda m: m == "x"))
    await settle()
    addr.send("x")
    addr.send("d")
    assert mbox.receive_nowait() == "a"  # the queue changes before the cancelled task resumes
    assert await mbox.receive_match(lambda m: m == "c") == "c"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [mbox.receive_nowait() for _ in range(len(mbox))] == ["b", "x", "d"]


async def test_cancelled_holder_passes_message_to_next_waiter(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    first = asyncio.create_task(mbox.receive())
    await settle()
    second = asyncio.create_task(mbox.receive())
    await settle()
    addr.send("only")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 5) == "only"


async def test_cancel_while_waiting_leaves_no_waiter(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    task = asyncio.create_task(mbox.receive())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    addr.send("kept")
    assert len(mbox) == 1


# ---------------------------------------------------------------- closing


async def test_close_is_idempotent_and_discards_queue(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    addr.send(1)
    mbox.close()
    mbox.close()
    assert mbox.closed and len(mbox) == 0
    with pytest.raises(reign.MailboxClosedError):
        mbox.receive_nowait()
    with pytest.raises(reign.MailboxClosedError):
        await mbox.receive()
    with pytest.raises(reign.MailboxClosedError):
        await mbox.receive_match(lambda m: True)


async def test_close_wakes_every_waiter(node: reign.Node) -> None:
    _, mbox = node.new_mailbox()
    tasks = [asyncio.create_task(mbox.receive()) for _ in range(3)]
    tasks += [asyncio.create_task(mbox.receive_match(lambda m: False)) for _ in range(3)]
    await settle()
    mbox.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, reign.MailboxClosedError) for r in results)


async def test_stopping_the_node_closes_mailboxes(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    waiter = asyncio.create_task(mbox.receive())
    await settle()
    await node.stop()
    await node.stop()  # idempotent
    assert mbox.closed
    with pytest.raises(reign.MailboxClosedError):
        await asyncio.wait_for(waiter, 5)
    assert addr.send("x") is False
    with pytest.raises(RuntimeError):
        node.new_mailbox()


# ---------------------------------------------------------------- close notification


async def test_on_close_notify_delivers_once(node: reign.Node) -> None:
    target, tbox = node.new_mailbox()
    watcher, wbox = node.new_mailbox()
    target.on_close_notify(watcher)
    target.on_close_notify(watcher)  # same watcher twice: one notice
    tbox.close()
    tbox.close()
    assert await wbox.receive(timeout=5) == reign.MailboxClosed(target.id)
    await settle()
    assert len(wbox) == 0


async def test_notify_registered_after_close_fires_at_once(node: reign.Node) -> None:
    target, tbox = node.new_mailbox()
    watcher, wbox = node.new_mailbox()
    tbox.close()
    target.on_close_notify(watcher)
    assert wbox.receive_nowait() == reign.MailboxClosed(target.id, "noproc")


async def test_notify_on_stale_unknown_or_other_node_fires_at_once(node: reign.Node) -> None:
    watcher, wbox = node.new_mailbox()
    stale = node.address(f"<0.{node.incarnation - 1}.1>")
    unknown = node.address(f"<0.{node.incarnation}.424242>")
    remote = node.address("<9.1.1>")
    for target in (stale, unknown, remote):
        target.on_close_notify(watcher)
    got = [wbox.receive_nowait() for _ in range(3)]
    assert got == [reign.MailboxClosed(stale.id, "noproc"), reign.MailboxClosed(unknown.id, "noproc"),
                   reign.MailboxClosed(remote.id, "noconnection")]


async def test_remove_notify(node: reign.Node) -> None:
    target, tbox = node.new_mailbox()
    kept, kept_box = node.new_mailbox()
    removed, removed_box = node.new_mailbox()
    target.on_close_notify(kept)
    target.on_close_notify(removed)
    target.remove_notify(removed)
    tbox.close()
    assert kept_box.receive_nowait() == reign.MailboxClosed(target.id)
    assert len(removed_box) == 0


async def test_close_notice_to_closed_watcher_is_dropped(node: reign.Node) -> None:
    target, tbox = node.new_mailbox()
    watcher, wbox = node.new_mailbox()
    target.on_close_notify(watcher)
    wbox.close()
    tbox.close()  # must not raise
    assert tbox.closed


async def test_mailbox_closed_is_frozen_with_id_field(node: reign.Node) -> None:
    target, _ = node.new_mailbox()
    notice = reign.MailboxClosed(target.id)
    assert notice.id == target.id
    with pytest.raises(AttributeError):
        notice.id = None  # type: ignore[misc]
    assert reign.MultipleClaim("x").name == "x"


# ---------------------------------------------------------------- threads


async def test_send_from_four_threads_keeps_per_thread_order(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    per_thread = 5000

    def producer(tid: int) -> None:
        for i in range(per_thread):
            assert addr.send((tid, i))

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    seen = dict.fromkeys(range(4), -1)
    for _ in range(4 * per_thread):
        tid, i = await mbox.receive(timeout=10)
        assert i == seen[tid] + 1, f"thread {tid} reordered: {i} after {seen[tid]}"
        seen[tid] = i
    for t in threads:
        t.join()
    assert all(v == per_thread - 1 for v in seen.values())
    assert len(mbox) == 0


async def test_send_from_thread_wakes_waiting_receiver(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    waiter = asyncio.create_task(mbox.receive())
    await settle()
    threading.Thread(target=addr.send, args=("from thread",)).start()
    assert await asyncio.wait_for(waiter, 5) == "from thread"


async def test_close_and_notify_from_another_thread(node: reign.Node) -> None:
    target, tbox = node.new_mailbox()
    watcher, wbox = node.new_mailbox()
    waiter = asyncio.create_task(tbox.receive())
    await settle()

    def other_thread() -> None:
        target.on_close_notify(watcher)
        tbox.close()

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    with pytest.raises(reign.MailboxClosedError):
        await asyncio.wait_for(waiter, 5)
    assert await wbox.receive(timeout=5) == reign.MailboxClosed(target.id)


# ---------------------------------------------------------------- scale and nodes


async def test_ten_thousand_mailboxes(node: reign.Node) -> None:
    pairs = [node.new_mailbox() for _ in range(10_000)]
    assert len({a for a, _ in pairs}) == 10_000
    for i, (addr, _) in enumerate(pairs):
        addr.send(i)
    assert all(mbox.receive_nowait() == i for i, (_, mbox) in enumerate(pairs))
    for _, mbox in pairs:
        mbox.close()
    assert not node._mailboxes


async def test_several_nodes_in_one_loop_are_independent() -> None:
    async with reign.no_clustering() as a, reign.no_clustering() as b:
        assert a.incarnation != b.incarnation
        addr_a, box_a = a.new_mailbox()
        addr_b, box_b = b.new_mailbox()
        assert addr_a != addr_b  # same node id and serial, different incarnation
        # b's copy of a's address is "node 0, other incarnation": gone from b's point of view
        assert b.address(str(addr_a)).send("x") is False
        assert addr_a.send("direct") is True
        assert box_a.receive_nowait() == "direct" and len(box_b) == 0


async def test_closed_mailboxes_are_released(node: reign.Node) -> None:
    import weakref

    _, mbox = node.new_mailbox()
    ref = weakref.ref(mbox)
    mbox.close()
    del mbox
    gc.collect()
    assert ref() is None


def test_mailbox_usable_before_loop_runs() -> None:
    node = reign.no_clustering()
    addr, mbox = node.new_mailbox()
    addr.send("early")

    async def main() -> object:
        async with node:
            return await mbox.receive(timeout=5)

    assert reign.run(main()) == "early"


async def test_cancelled_match_after_cancelled_plain_restores_arrival_order(node: reign.Node) -> None:
    # Found by the stateful test: a selective receiver cancelled while holding a message must
    # put it back behind the older message another cancelled receiver put back first.
    addr, mbox = node.new_mailbox()
    match = asyncio.create_task(mbox.receive_match(lambda m: m[0] == 1))
    await settle()
    plain = asyncio.create_task(mbox.receive())
    await settle()
    addr.send((0, 0))
    plain.cancel()
    await settle()
    addr.send((1, 0))
    match.cancel()
    await settle()
    assert [mbox.receive_nowait() for _ in range(len(mbox))] == [(0, 0), (1, 0)]


async def test_cancelled_plain_receivers_put_back_in_hand_out_order(node: reign.Node) -> None:
    # Found in review: both handed a message in one iteration, both cancelled before resuming.
    addr, mbox = node.new_mailbox()
    first = asyncio.create_task(mbox.receive())
    second = asyncio.create_task(mbox.receive())
    await settle()
    addr.send("m1")
    addr.send("m2")
    addr.send("m3")  # nobody waits for this one: queued
    first.cancel()
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert [mbox.receive_nowait() for _ in range(len(mbox))] == ["m1", "m2", "m3"]


async def test_close_from_another_thread_wins_over_queued_messages(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    addr.send(1)
    addr.send(2)
    t = threading.Thread(target=mbox.close)
    t.start()
    t.join()
    assert mbox.closed and len(mbox) == 0  # the discard itself runs on the loop, later
    with pytest.raises(reign.MailboxClosedError):
        mbox.receive_nowait()
    with pytest.raises(reign.MailboxClosedError):
        await mbox.receive()


async def test_a_closed_watcher_is_dropped_from_what_it_watched(node: reign.Node) -> None:
    server, sbox = node.new_mailbox()
    for _ in range(100):  # a fresh reply mailbox per request, each monitoring the server
        reply, rbox = node.new_mailbox()
        server.on_close_notify(reply)
        rbox.close()
    assert not sbox._watchers
    kept, kbox = node.new_mailbox()
    server.on_close_notify(kept)
    sbox.close()
    assert kbox.receive_nowait() == reign.MailboxClosed(server.id)
    assert not kbox._watching  # the finished watch is forgotten too


async def test_overlong_address_numbers_are_illegal_not_value_errors(node: reign.Node) -> None:
    with pytest.raises(reign.IllegalAddressFormatError):
        node.address("<1." + "9" * 5000 + ".1>")
