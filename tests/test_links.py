"""Exit reasons, links and exit signals on one node and across two real TLS nodes (one process).

Every reason the contract lists reaches watchers and linked processes on the target's own node
*and* on the other node: each cause below is observed from both at once (an :class:`Observer`
per node: a watcher, a linked process that does not trap exits and one that does). Lost nodes
(``noconnection``) are made here with a hand-driven peer that hangs up; kill -9 of a real node
is in ``test_links_process.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import reign
from reign import Crash, Exit, MailboxClosed, MailboxID

from cluster_util import drain, make_cluster, raw_peer, wait_connected, wait_for
from proc_util import HANG, Observer, on, roundtrip


@reign.register_type(name="test.links.Reason")
@dataclass(frozen=True)
class Reason:
    code: int
    detail: str


Pair = tuple[reign.Node, reign.Node]


@pytest.fixture(params=["local", "remote"])
def nodes(request: pytest.FixtureRequest, pair: Pair) -> Pair:
    """(the node of the process under test, the node of its peer): the same node, or the other."""
    n1, n2 = pair
    return (n2, n2) if request.param == "local" else (n1, n2)


async def _victim(mbox: reign.Mailbox) -> None:
    """A target process: does what the one command it receives says."""
    cmd = await mbox.receive()
    if cmd == "return":
        return
    if cmd == "raise":
        raise ValueError("victim failed")
    if cmd[0] == "close":
        mbox.close(cmd[1])
        await asyncio.sleep(0)
    await mbox.receive()


async def _watched_from_both(pair: Pair) -> tuple[reign.Address, reign.Mailbox, asyncio.Task[None], list[Observer], dict[Observer, tuple[reign.Address, reign.Address]]]:
    """A victim on node 2, watched and linked (trapping and not) from nodes 1 and 2."""
    n1, n2 = pair
    addr, mbox, task = n2.spawn_process(_victim, ())
    observers = [Observer(n1), Observer(n2)]
    procs = {}
    for obs in observers:
        obs.watch(addr)
        procs[obs] = (await obs.linked(addr, trap=False), await obs.linked(addr, trap=True))
    await roundtrip(n1, n2)  # node 2 has every LINK and MONITOR of node 1
    return addr, mbox, task, observers, procs


async def _expect_reason(obs: Observer, victim: reign.Address, procs: tuple[reign.Address, reign.Address], reason: Any) -> None:
    plain, trapper = procs
    if reason == "normal":  # only the trapping side hears of it; the other one lives on
        await obs.expect(MailboxClosed(victim.id, reason), ("got", trapper, Exit(victim.id, reason)))
        await obs.alive(plain)
    else:
        await obs.expect(
            MailboxClosed(victim.id, reason), MailboxClosed(plain.id, reason), ("got", trapper, Exit(victim.id, reason))
        )
    await obs.alive(trapper)


Cause = Callable[[reign.Address, reign.Mailbox, asyncio.Task[None]], Awaitable[Any]]


async def _returns(addr: reign.Address, mbox: reign.Mailbox, task: asyncio.Task[None]) -> Any:
    addr.send("return")
    return "normal"


async def _raises(addr: reign.Address, mbox: reign.Mailbox, task: asyncio.Task[None]) -> Any:
    addr.send("raise")
    await asyncio.wait([task], timeout=HANG)
    crash = mbox.reason
    assert type(crash) is Crash and (crash.type, crash.message) == ("ValueError", "victim failed")
    assert "_victim" in crash.traceback
    return crash


async def _cancelled(addr: reign.Address, mbox: reign.Mailbox, task: asyncio.Task[None]) -> Any:
    task.cancel()
    return "shutdown"


async def _killed(addr: reign.Address, mbox: reign.Mailbox, task: asyncio.Task[None]) -> Any:
    reign.exit(addr, "kill")
    return "killed"


def _closes(reason: Any) -> Cause:
    async def cause(addr: reign.Address, mbox: reign.Mailbox, task: asyncio.Task[None]) -> Any:
        addr.send(("close", reason))
        return reason

    return cause


def _exits(reason: Any) -> Cause:
    async def cause(addr: reign.Address, mbox: reign.Mailbox, task: asyncio.Task[None]) -> Any:
        reign.exit(addr, reason)
        return reason

    return cause


CAUSES: dict[str, Cause] = {
    "returns -> normal": _returns,
    "raises -> Crash": _raises,
    "task cancelled -> shutdown": _cancelled,
    "exit kill -> killed": _killed,
    "exit shutdown": _exits("shutdown"),
    "exit custom tuple": _exits(("custom", 1, [2.5, None])),
    "exit registered class": _exits(Reason(7, "seven")),
    "close normal": _closes("normal"),
    "close kill -> kill": _closes("kill"),  # from a link, "kill" is an ordinary reason (Erlang)
    "close custom tuple": _closes(("bye", b"bytes")),
    "close registered class": _closes(Reason(8, "eight")),
}


@pytest.mark.parametrize("cause", list(CAUSES))
async def test_reason_reaches_watchers_and_links_on_both_nodes(pair: Pair, cause: str) -> None:
    addr, mbox, task, observers, procs = await _watched_from_both(pair)
    reason = await CAUSES[cause](addr, mbox, task)
    for obs in observers:
        await _expect_reason(obs, addr, procs[obs], reason)
    assert mbox.reason == reason


async def test_node_stop_reaches_the_other_node_as_shutdown(spec: Path) -> None:
    async with reign.create_from_spec_file(spec, 1) as n1:
        n2 = reign.create_from_spec_file(spec, 2)
        await n2.start()
        try:
            await wait_connected([n1, n2])
            addr = n2.spawn(_victim)
            plain_box = n2.new_mailbox()  # a plain mailbox is closed with "shutdown" too
            obs = Observer(n1)
            obs.watch(addr)
            obs.watch(plain_box[0])
            procs = (await obs.linked(addr, trap=False), await obs.linked(addr, trap=True))
            await roundtrip(n1, n2)
        finally:
            await n2.stop()
        got = [await obs.box.receive(timeout=HANG) for _ in range(4)]
        assert sorted(map(repr, got)) == sorted(map(repr, [
            MailboxClosed(addr.id, "shutdown"), MailboxClosed(plain_box[0].id, "shutdown"),
            MailboxClosed(procs[0].id, "shutdown"), ("got", procs[1], Exit(addr.id, "shutdown")),
        ]))
        await obs.alive(procs[1])


@pytest.mark.parametrize("how", ["closed", "unknown serial", "other incarnation"])
async def test_watch_and_link_of_a_gone_target_say_noproc(nodes: Pair, how: str) -> None:
    home, there = nodes
    closed, cbox = there.new_mailbox()
    cbox.close("long ago")
    target = {
        "closed": closed,
        "unknown serial": there.address(f"<{there.id}.{there.incarnation}.987654>"),
        "other incarnation": there.address(f"<{there.id}.{there.incarnation + 1}.1>"),
    }[how]
    obs = Observer(home)
    obs.watch(target)
    trapper = await obs.linked(target, trap=True)
    plain = home.spawn(_victim, link=on(home, target))
    plain.on_close_notify(obs.addr)
    await obs.expect(
        MailboxClosed(target.id, "noproc"), ("got", trapper, Exit(target.id, "noproc")), MailboxClosed(plain.id, "noproc")
    )


async def test_watch_and_link_toward_a_lost_or_unknown_node_say_noconnection(pair: Pair) -> None:
    n1, n2 = pair
    survivor, _ = n2.new_mailbox()
    await n2.stop()
    await wait_for(lambda: n1.statistics().peers[2].state == "down")
    lost = on(n1, survivor)  # its node was up once and is gone now
    out_of_spec = n1.address("<77.1.1>")
    obs = Observer(n1)
    trapper = await obs.process(trap=True)
    mbox = n1.local_mailbox(trapper.id)
    assert mbox is not None
    for target in (lost, out_of_spec):
        obs.watch(target)
        mbox.link(target)
    plain = n1.spawn(_victim, link=lost)
    plain.on_close_notify(obs.addr)
    await obs.expect(
        MailboxClosed(lost.id, "noconnection"), MailboxClosed(out_of_spec.id, "noconnection"),
        ("got", trapper, Exit(lost.id, "noconnection")), ("got", trapper, Exit(out_of_spec.id, "noconnection")),
        MailboxClosed(plain.id, "noproc"),  # it had exited (noconnection) before the watch
    )


async def test_no_clustering_other_nodes_are_unreachable_noconnection() -> None:
    async with reign.no_clustering() as node:
        obs = Observer(node)
        target = node.address("<4.1.1>")
        obs.watch(target)
        trapper = await obs.linked(target, trap=True)
        plain = node.spawn(_victim, link=target)
        plain.on_close_notify(obs.addr)
        await obs.expect(
            MailboxClosed(target.id, "noconnection"), ("got", trapper, Exit(target.id, "noconnection")),
            MailboxClosed(plain.id, "noproc"),  # watched after it had already exited
        )


async def test_lost_node_delivers_noconnection_to_both_link_directions(spec: Path) -> None:
    """Node 2 holds links to and from mailboxes of a hand-driven node 1; node 1 hangs up."""
    async with reign.create_from_spec_file(spec, 2) as n2:
        reader, writer, wire = await raw_peer(spec, 1, n2)
        remote_a = n2.address("<1.7.5>")  # node 2's processes link to this one (LINK out)
        remote_b = MailboxID(1, 7, 6)  # this one links to node 2's processes (LINK in)
        obs = Observer(n2)
        obs.watch(remote_a)
        out_plain = await obs.linked(remote_a, trap=False)
        out_trap = await obs.linked(remote_a, trap=True)
        in_plain = await obs.process()
        in_trap = await obs.process(trap=True)
        writer.write(wire.link(remote_b, in_plain.id) + wire.link(remote_b, in_trap.id))
        await writer.drain()
        await wait_for(lambda: {in_plain.id, in_trap.id} <= _linked_to(n2, remote_b))
        writer.close()
        await obs.expect(
            MailboxClosed(remote_a.id, "noconnection"),
            MailboxClosed(out_plain.id, "noconnection"), ("got", out_trap, Exit(remote_a.id, "noconnection")),
            MailboxClosed(in_plain.id, "noconnection"), ("got", in_trap, Exit(remote_b, "noconnection")),
        )
        await obs.alive(in_trap)


def _linked_to(node: reign.Node, remote: MailboxID) -> set[MailboxID]:
    return {mbox.id for mbox in node._mailboxes.values() if remote in mbox.links}


async def test_link_made_before_the_first_connection_waits_for_it(spec: Path) -> None:
    async with reign.create_from_spec_file(spec, 1) as n1:
        n2 = reign.create_from_spec_file(spec, 2)  # not started: node 1 only knows its id
        target, tbox = n2.new_mailbox()
        stale = n1.address(f"<2.{n2.incarnation + 1}.1>")
        obs = Observer(n1)
        trapper = await obs.linked(on(n1, target), trap=True)
        stale_trapper = await obs.linked(stale, trap=True)
        obs.expect_nothing()  # not reported down: node 2 may yet come up
        async with n2:
            await wait_connected([n1, n2])
            await obs.expect(("got", stale_trapper, Exit(stale.id, "noproc")))  # another incarnation
            await roundtrip(n1, n2)
            assert tbox.links == {trapper.id}
            tbox.close("boom")
            await obs.expect(("got", trapper, Exit(target.id, "boom")))


# ------------------------------------------------------------------------ link semantics


async def test_links_are_bidirectional(nodes: Pair) -> None:
    home, there = nodes
    obs_home, obs_there = Observer(home), Observer(there)
    a = await obs_home.process(trap=True)
    b = await obs_there.process(trap=True)
    a_box = home.local_mailbox(a.id)
    assert a_box is not None
    a_box.link(on(home, b))  # made by one side
    await roundtrip(home, there)
    reign.exit(on(home, a), "kill")  # a dies: b, trapping, hears of it
    await obs_home.expect(MailboxClosed(a.id, "killed"))
    await obs_there.expect(("got", b, Exit(a.id, "killed")))

    c = await obs_home.process(trap=True)
    d = await obs_there.process(trap=True)
    c_box = home.local_mailbox(c.id)
    assert c_box is not None
    c_box.link(on(home, d))
    await roundtrip(home, there)
    reign.exit(on(there, d), "kill")  # the other side dies: the side that linked hears of it
    await obs_there.expect(MailboxClosed(d.id, "killed"))
    await obs_home.expect(("got", c, Exit(d.id, "killed")))


async def test_abnormal_exit_propagates_along_a_chain(nodes: Pair) -> None:
    home, there = nodes
    obs = Observer(home)
    first, fbox = home.new_mailbox()
    second = there.spawn(_victim, link=on(there, first))  # home -> there
    third = await obs.linked(on(home, second), trap=False)  # there -> home
    last = await obs.linked(third, trap=True)
    for proc in (first, second):
        obs.watch(proc)
    await roundtrip(home, there)
    fbox.close(("chain", 1))
    await obs.expect(
        MailboxClosed(first.id, ("chain", 1)), MailboxClosed(second.id, ("chain", 1)),
        MailboxClosed(third.id, ("chain", 1)), ("got", last, Exit(third.id, ("chain", 1))),
    )


async def test_normal_exit_does_not_propagate_past_a_non_trapping_link(nodes: Pair) -> None:
    home, there = nodes
    obs = Observer(home)
    first, fbox = there.new_mailbox()
    middle = await obs.linked(first, trap=False)
    tail = await obs.linked(middle, trap=True)
    obs.watch(first)
    await roundtrip(home, there)
    fbox.close()
    await obs.expect(MailboxClosed(first.id, "normal"))
    await obs.alive(middle)
    await obs.alive(tail)


@pytest.mark.parametrize("side", ["linker", "linked"])
async def test_unlink_stops_exit_propagation(nodes: Pair, side: str) -> None:
    home, there = nodes
    obs = Observer(home)
    target, tbox = there.new_mailbox()
    plain = await obs.linked(target, trap=False)
    trapper = await obs.linked(target, trap=True)
    await roundtrip(home, there)
    if side == "linker":
        for proc in (plain, trapper):
            mbox = home.local_mailbox(proc.id)
            assert mbox is not None
            mbox.unlink(on(home, target))
    else:
        tbox.unlink(on(there, plain))
        tbox.unlink(on(there, trapper))
    await roundtrip(home, there)
    assert tbox.links == frozenset()
    tbox.close("boom")
    await roundtrip(there, home)
    await obs.alive(plain)
    await obs.alive(trapper)
    obs.expect_nothing()


async def test_unlink_without_a_link_and_after_close_are_no_ops(nodes: Pair) -> None:
    home, there = nodes
    a, abox = home.new_mailbox()
    b, bbox = there.new_mailbox()
    abox.unlink(on(home, b))
    bbox.close()
    abox.unlink(on(home, b))
    abox.link(on(home, b))  # gone: noproc ends abox (it does not trap)
    await wait_for(lambda: abox.closed)
    assert abox.reason == "noproc"
    abox.unlink(on(home, b))
    abox.link(on(home, b))  # a closed mailbox links nothing
    with pytest.raises(TypeError):
        abox.link(str(b))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        abox.unlink(b.id)  # type: ignore[arg-type]


async def test_linking_twice_is_one_link(nodes: Pair) -> None:
    home, there = nodes
    obs = Observer(home)
    target, tbox = there.new_mailbox()
    trapper = await obs.linked(target, trap=True)
    mbox = home.local_mailbox(trapper.id)
    assert mbox is not None
    mbox.link(on(home, target))
    mbox.link(on(home, target))
    tbox.link(on(there, trapper))  # from the other side: still the same link
    await roundtrip(home, there)
    assert mbox.links == {target.id} and tbox.links == {trapper.id}
    tbox.close("once")
    await obs.expect(("got", trapper, Exit(target.id, "once")))  # one Exit, not four
    await roundtrip(there, home)
    obs.expect_nothing()

    other, obox = there.new_mailbox()
    mbox.link(on(home, other))
    mbox.link(on(home, other))
    mbox.unlink(on(home, other))  # one unlink undoes it
    await roundtrip(home, there)
    assert obox.links == frozenset()
    obox.close("boom")
    await roundtrip(there, home)
    obs.expect_nothing()


async def test_link_to_self_is_a_no_op(nodes: Pair) -> None:
    home, _ = nodes
    obs = Observer(home)
    addr, mbox = home.new_mailbox()
    mbox.link(addr)
    assert mbox.links == frozenset()
    obs.watch(addr)
    mbox.close("alone")
    await obs.expect(MailboxClosed(addr.id, "alone"))


async def test_links_end_when_the_mailbox_closes(nodes: Pair) -> None:
    home, there = nodes
    obs = Observer(home)
    target, tbox = there.new_mailbox()
    trapper = await obs.linked(target, trap=True)
    await roundtrip(home, there)
    mbox = home.local_mailbox(trapper.id)
    assert mbox is not None and mbox.links == {target.id}
    tbox.close("boom")
    await obs.expect(("got", trapper, Exit(target.id, "boom")))
    assert mbox.links == frozenset()  # the link is gone with the exit signal


# ------------------------------------------------------------------------ exit signals across nodes


async def test_exit_from_a_process_names_it_as_sender_on_any_node(nodes: Pair) -> None:
    home, there = nodes
    obs = Observer(there)
    trapper = await obs.process(trap=True)

    async def sender(mbox: reign.Mailbox, target: reign.Address) -> None:
        reign.exit(target, "boom")
        reign.exit(target, "normal")
        await mbox.receive()

    me = home.spawn(sender, on(home, trapper))
    await obs.expect(("got", trapper, Exit(me.id, "boom")), ("got", trapper, Exit(me.id, "normal")))
    reign.exit(on(home, trapper), ("from", "outside"))
    await obs.expect(("got", trapper, Exit(None, ("from", "outside"))))


async def test_exit_across_nodes_follows_erlang(nodes: Pair) -> None:
    home, there = nodes
    obs = Observer(there)
    plain = await obs.process()
    trapper = await obs.process(trap=True)
    reign.exit(on(home, plain), "normal")  # ignored by a non-trapping target
    await roundtrip(home, there)
    await obs.alive(plain)
    reign.exit(on(home, trapper), "kill")  # untrappable
    reign.exit(on(home, plain), Reason(1, "one"))
    await obs.expect(MailboxClosed(trapper.id, "killed"), MailboxClosed(plain.id, Reason(1, "one")))
    reign.exit(on(home, plain), "again")  # gone: ignored
    await roundtrip(home, there)
    obs.expect_nothing()


async def test_exit_refuses_a_reason_that_cannot_cross_nodes(nodes: Pair) -> None:
    home, there = nodes
    obs = Observer(there)
    trapper = await obs.process(trap=True)
    with pytest.raises(reign.EncodeError):
        reign.exit(on(home, trapper), {1, 2})
    await roundtrip(home, there)
    obs.expect_nothing()


async def test_kill_reaches_links_as_killed_which_they_may_trap(nodes: Pair) -> None:
    home, there = nodes
    obs = Observer(home)
    target = await Observer(there).process(trap=True)
    plain = await obs.linked(target, trap=False)
    trapper = await obs.linked(target, trap=True)
    obs.watch(target)
    await roundtrip(home, there)
    reign.exit(on(home, target), "kill")
    await obs.expect(
        MailboxClosed(target.id, "killed"), MailboxClosed(plain.id, "killed"), ("got", trapper, Exit(target.id, "killed"))
    )


async def test_messages_and_exit_signals_keep_their_order_across_nodes(pair: Pair) -> None:
    n1, n2 = pair
    addr, mbox = n2.new_mailbox()
    mbox.trap_exits = True
    target = on(n1, addr)

    async def fn(me: reign.Mailbox) -> None:
        me.link(target)
        for i in range(3):
            target.send(i)
        reign.exit(target, "signal")
        target.send("after")
        me.close(("bye", 1))

    sender = n1.spawn(fn)
    await wait_for(lambda: len(mbox) == 6)
    assert drain(mbox) == [0, 1, 2, Exit(sender.id, "signal"), "after", Exit(sender.id, ("bye", 1))]


# ------------------------------------------------------------------------ reasons larger than a frame


def _deep(n: int) -> None:
    if n:
        _deep(n - 1)
    raise ValueError("x" * 3000)


async def _deep_crash(mbox: reign.Mailbox) -> None:
    await mbox.receive()
    _deep(40)


@pytest.mark.parametrize("limit", [1024, 2048])
async def test_a_crash_too_large_for_a_frame_still_arrives_as_a_crash(tmp_path: Path, limit: int) -> None:
    spec = make_cluster(tmp_path, [1, 2], max_message_bytes=limit)
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await wait_connected([n1, n2])
        addr, mbox, task = n2.spawn_process(_deep_crash, ())
        obs = Observer(n1)
        obs.watch(addr)
        trapper = await obs.linked(addr, trap=True)
        await roundtrip(n1, n2)
        addr.send("go")
        got = [await obs.box.receive(timeout=HANG) for _ in range(2)]
        full = mbox.reason
        assert type(full) is Crash and len(full.message) + len(full.traceback) > limit
        down = next(m for m in got if type(m) is MailboxClosed)
        exit_ = next(m[2] for m in got if type(m) is tuple and m[:2] == ("got", trapper))
        for reason in (down.reason, exit_.reason):
            assert type(reason) is Crash, reason
            assert reason.type == "ValueError"
            assert full.message.startswith(reason.message) and full.traceback.endswith(reason.traceback[4:])
            assert reason.traceback.startswith("...\n")


async def test_another_reason_too_large_for_a_frame_arrives_as_reason_too_large(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2], max_message_bytes=1024)
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await wait_connected([n1, n2])
        target, tbox = n2.new_mailbox()
        obs = Observer(n1)
        obs.watch(target)
        plain = await obs.linked(target, trap=False)
        await roundtrip(n1, n2)
        tbox.close(("big", "y" * 5000))
        got = [await obs.box.receive(timeout=HANG) for _ in range(2)]
        reasons = {m.reason for m in got}
        assert len(reasons) == 1 and {m.id for m in got} == {target.id, plain.id}
        kind, text = reasons.pop()
        assert kind == "reason_too_large" and text.startswith("('big', 'yyy")


# ------------------------------------------------------------------------ check_messages on a clustered node


async def test_check_messages_on_a_clustered_node(spec: Path) -> None:
    async with reign.create_from_spec_file(spec, 1, check_messages=True) as n1, \
            reign.create_from_spec_file(spec, 2) as n2:
        await wait_connected([n1, n2])
        assert n1.check_messages and not n2.check_messages
        local, lbox = n1.new_mailbox()
        remote, rbox = n2.new_mailbox()
        for target in (local, on(n1, remote)):  # the same rule for both: a set cannot cross
            with pytest.raises(reign.EncodeError):
                target.send({1, 2})
        value = [local, Reason(1, "r")]
        assert local.send(value) is True
        got = lbox.receive_nowait()
        assert got == value and got is not value
        got[0].send("usable")
        assert lbox.receive_nowait() == "usable"
        assert on(n1, remote).send(("from", local)) is True
        assert await rbox.receive(timeout=HANG) == ("from", local)
        same = {3}
        assert remote.send(same) is True  # node 2 does not check its own local sends
        assert rbox.receive_nowait() is same
        watcher, wbox = n1.new_mailbox()
        remote_on_n1 = on(n1, remote)
        remote_on_n1.on_close_notify(watcher)
        await roundtrip(n1, n2)
        rbox.close(Reason(2, "two"))  # notices are not messages: they arrive as they are
        assert await wbox.receive(timeout=HANG) == MailboxClosed(remote.id, Reason(2, "two"))
