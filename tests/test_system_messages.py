"""System messages (``MailboxClosed``, ``Exit``, ``MultipleClaim``) come only from the runtime.

No API sends one as the message itself (``TypeError``, nothing queued), locally or toward
another node; a peer whose MESSAGE or NAMED frame decodes to one loses its connection, and the
node keeps serving everyone else. Inside another value a notice is just a registered type.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import reign
from reign import Exit, MailboxClosed, MailboxID, MultipleClaim
from reign._core import codec

from cluster_util import drain, raw_peer, wait_connected, wait_for
from proc_util import HANG, on, roundtrip

Pair = tuple[reign.Node, reign.Node]

NOTICES = {
    "MailboxClosed": MailboxClosed(MailboxID(2, 5, 9), "normal"),
    "MailboxClosed with a reason": MailboxClosed(MailboxID(2, 5, 9), ("crashed", 1)),
    "Exit": Exit(MailboxID(2, 5, 9), "boom"),
    "Exit without sender": Exit(None, "kill"),
    "MultipleClaim": MultipleClaim("svc"),
}


@pytest.mark.parametrize("check_messages", [False, True])
@pytest.mark.parametrize("notice", list(NOTICES))
async def test_a_notice_cannot_be_sent_locally(notice: str, check_messages: bool) -> None:
    async with reign.no_clustering(check_messages=check_messages) as node:
        addr, mbox = node.new_mailbox()
        node.register("svc", addr)
        closed, cbox = node.new_mailbox()
        cbox.close()
        for target in (addr, closed, node.address(str(addr)), node.address("<4.1.1>")):
            with pytest.raises(TypeError, match="system message"):
                target.send(NOTICES[notice])
        with pytest.raises(TypeError, match="system message"):
            node.send_named("svc", NOTICES[notice])
        assert len(mbox) == 0
        assert addr.send(("forwarded", NOTICES[notice])) is True  # inside a value: fine
        assert mbox.receive_nowait() == ("forwarded", NOTICES[notice])


@pytest.mark.parametrize("notice", list(NOTICES))
async def test_a_notice_cannot_be_sent_to_another_node(pair: Pair, notice: str) -> None:
    n1, n2 = pair
    a2, mbox2 = n2.new_mailbox()
    n2.register("svc", a2)
    with pytest.raises(TypeError, match="system message"):
        on(n1, a2).send(NOTICES[notice])
    with pytest.raises(TypeError, match="system message"):
        n1.send_named("svc", NOTICES[notice], node=2)
    await roundtrip(n1, n2)
    assert len(mbox2) == 0
    assert n1.statistics().peers[2].state == "up" and n1.statistics().peers[2].connects == 1


async def test_a_notice_inside_another_value_travels_between_nodes(pair: Pair) -> None:
    n1, n2 = pair
    a2, mbox2 = n2.new_mailbox()
    n2.register("svc", a2)
    values = [("fwd", notice) for notice in NOTICES.values()] + [[NOTICES["Exit"]], {"down": NOTICES["MailboxClosed"]}]
    for value in values:
        assert on(n1, a2).send(value) is True
        assert n1.send_named("svc", value, node=2) is True
    got = [await mbox2.receive(timeout=HANG) for _ in range(2 * len(values))]
    assert got == [v for value in values for v in (value, value)]
    assert type(got[0][1]) is MailboxClosed


async def test_a_subclass_of_a_notice_cannot_be_made() -> None:
    # A subclass would pass a type check and match `case MailboxClosed(...)` in a receiver.
    for cls in (MailboxClosed, Exit, MultipleClaim):
        with pytest.raises(TypeError):
            type("Forged", (cls,), {"__slots__": ()})


async def test_reasons_may_hold_notices(pair: Pair) -> None:
    n1, n2 = pair
    a2, mbox2 = n2.new_mailbox()
    watcher, wbox = n1.new_mailbox()
    on(n1, a2).on_close_notify(watcher)
    await roundtrip(n1, n2)
    reason = ("after", NOTICES["Exit"])
    mbox2.close(reason)
    assert await wbox.receive(timeout=HANG) == MailboxClosed(a2.id, reason)


# ------------------------------------------------------------------------ from a peer


def _message(wire: Any, target: MailboxID, value: Any) -> bytes:
    return wire.message(target, codec.encode(value))  # type: ignore[no-any-return]


def _named(wire: Any, name: str, value: Any) -> bytes:
    return wire.named(name, codec.encode(value))  # type: ignore[no-any-return]


@pytest.mark.parametrize("frame", ["MESSAGE", "NAMED"])
@pytest.mark.parametrize("notice", list(NOTICES))
async def test_a_peer_sending_a_notice_loses_its_connection(spec: Path, notice: str, frame: str) -> None:
    """A hand-driven node 1 forges a notice for node 2; node 3 is a bystander."""
    async with reign.create_from_spec_file(spec, 2) as n2, reign.create_from_spec_file(spec, 3) as n3:
        await wait_connected([n2, n3])
        target, tbox = n2.new_mailbox()
        n2.register("svc", target)
        reader, writer, wire = await raw_peer(spec, 1, n2)
        forged = NOTICES[notice]
        make = (lambda value: _message(wire, target.id, value)) if frame == "MESSAGE" else (
            lambda value: _named(wire, "svc", value))
        with capture_logs() as logs:
            writer.write(make("before") + make(forged) + make("after"))
            await writer.drain()
            await wait_for(lambda: n2.statistics().peers[1].state == "down")
            while await asyncio.wait_for(reader.read(65536), HANG):
                pass  # then EOF: node 2 closed the connection
        writer.close()
        assert drain(tbox) == ["before"]  # neither the notice nor anything after it
        assert any(e["event"] == "peer.protocol_error" and "system messages" in str(e.get("reason", ""))
                   for e in logs), logs
        # the node keeps serving: its bystander connection is untouched
        assert n2.statistics().peers[3].state == "up" and n2.statistics().peers[3].connects == 1
        a3, mbox3 = n3.new_mailbox()
        assert on(n2, a3).send("still here") is True
        assert await mbox3.receive(timeout=HANG) == "still here"
        assert on(n3, target).send("and here") is True
        assert await tbox.receive(timeout=HANG) == "and here"


async def test_a_peer_may_send_a_notice_inside_a_value(spec: Path) -> None:
    async with reign.create_from_spec_file(spec, 2) as n2:
        target, tbox = n2.new_mailbox()
        n2.register("svc", target)
        reader, writer, wire = await raw_peer(spec, 1, n2)
        values = [("fwd", notice) for notice in NOTICES.values()]
        writer.write(b"".join(_message(wire, target.id, v) + _named(wire, "svc", v) for v in values))
        await writer.drain()
        got = [await tbox.receive(timeout=HANG) for _ in range(2 * len(values))]
        assert got == [v for value in values for v in (value, value)]
        assert n2.statistics().peers[1].state == "up"
        writer.close()
