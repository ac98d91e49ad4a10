"""Helpers for the process, link and local-name tests: observers that report what they see.

An :class:`Observer` lives on one node and watches a target from there in every way the contract
offers: a watcher mailbox (``on_close_notify``), a linked process that does not trap exits and
one that does. Everything it learns arrives in its one ``box``, as plain values:

* ``MailboxClosed(id, reason)`` for the target and for each of its linked processes (it watches
  them too, so a linked process that died says with which reason);
* ``("got", process, msg)`` for every message a linked process receives (the ``Exit`` of a
  trapping one, or a ``"ping"`` the test sends to check that a process is still alive);
* ``("started", process)`` once each linked process runs (and holds its link).

:func:`roundtrip` orders the test against the runtime: when it returns, every frame each node
sent the other before it has been handled.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import reign

from cluster_util import drain

#: Seconds any single wait may take: only a guard against hangs, never a measured duration.
HANG = 10.0


def on(node: reign.Node, addr: reign.Address) -> reign.Address:
    """``addr`` as seen by ``node`` (bound to it, as if it had arrived in a message there)."""
    return node.address(bytes(addr))


async def roundtrip(a: reign.Node, b: reign.Node) -> None:
    """When this returns, ``b`` has handled every frame ``a`` sent it before, and ``a`` every
    frame ``b`` sent it before ``b`` answered. For one node: let its ready tasks run."""
    if a is b:
        for _ in range(3):
            await asyncio.sleep(0)
        return
    ra, abox = a.new_mailbox()
    rb, bbox = b.new_mailbox()
    try:
        assert on(a, rb).send(ra)
        reply_to = await bbox.receive(timeout=HANG)
        assert reply_to.send("back")
        assert await abox.receive(timeout=HANG) == "back"
    finally:
        abox.close()
        bbox.close()
    for _ in range(3):  # the processes' own tasks act on what arrived
        await asyncio.sleep(0)


async def _forward(mbox: reign.Mailbox, report: reign.Address, trap: bool, target: reign.Address | None) -> None:
    """A linked observer process: report every message it receives."""
    if trap:
        mbox.trap_exits = True
        if target is not None:
            mbox.link(target)
    report.send(("started", mbox.address))
    async for msg in mbox:
        report.send(("got", mbox.address, msg))


class Observer:
    """Watches targets from ``node``: see the module header."""

    def __init__(self, node: reign.Node) -> None:
        self.node = node
        self.addr, self.box = node.new_mailbox()

    def watch(self, target: reign.Address) -> None:
        on(self.node, target).on_close_notify(self.addr)

    async def linked(self, target: reign.Address, *, trap: bool) -> reign.Address:
        """A process of ``node`` linked to ``target`` (and watched), running when this returns.

        A non-trapping one is linked by ``spawn(link=)``; a trapping one links itself once it
        traps exits, so even a ``noproc`` reaches it as an ``Exit``."""
        target = on(self.node, target)
        if trap:
            proc = self.node.spawn(_forward, self.addr, True, target)
        else:
            proc = self.node.spawn(_forward, self.addr, False, None, link=target)
        proc.on_close_notify(self.addr)
        msg = await self.box.receive_match(
            lambda m: m == ("started", proc) or (type(m) is reign.MailboxClosed and m.id == proc.id), timeout=HANG
        )
        if msg != ("started", proc):  # it may have died before running (a link to a gone target)
            self.box.close()
            raise AssertionError(f"{proc} did not start: {msg}")
        return proc

    async def process(self, *, trap: bool = False) -> reign.Address:
        """A watched process of ``node`` that reports what it receives, linked to nothing."""
        proc = self.node.spawn(_forward, self.addr, trap, None)
        proc.on_close_notify(self.addr)
        assert await self.box.receive_match(lambda m: m == ("started", proc), timeout=HANG) == ("started", proc)
        return proc

    async def expect(self, *msgs: Any) -> None:
        """The box receives exactly ``msgs`` (in any order), and then nothing else for now."""
        got = [await self.box.receive(timeout=HANG) for _ in msgs]
        assert Counter(map(_key, got)) == Counter(map(_key, msgs)), f"got {got}, expected {list(msgs)}"
        self.expect_nothing()

    def expect_nothing(self) -> None:
        extra = drain(self.box)
        assert not extra, f"unexpected: {extra}"

    async def alive(self, proc: reign.Address) -> None:
        """``proc`` (one of ours) still runs: it answers a ping."""
        assert on(self.node, proc).send("ping")
        assert await self.box.receive(timeout=HANG) == ("got", proc, "ping")


def _key(msg: Any) -> str:
    return repr(msg)  # messages may hold unhashable values (lists in reasons)
