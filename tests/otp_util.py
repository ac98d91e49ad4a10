"""Helpers for the gen_server and supervisor tests: node pairs, a probe server, waiting.

:func:`node_pair` gives ``(server_node, client_node)`` in one of three layouts, so one test
body runs locally, locally with ``check_messages`` (every local send encoded and decoded), and
across two real TLS nodes in this process (the client talks to the server over the wire).

:class:`Probe` is a gen_server whose every callback appends to a plain list the test holds (it
runs in this process, so the test reads that list directly; nothing in it crosses a node).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import reign

from cluster_util import make_cluster

#: The layouts of :func:`node_pair`.
LAYOUTS = ("local", "checked", "remote")
#: Hang guard for anything a test waits for (never an expected duration).
GUARD = 10.0


@contextlib.asynccontextmanager
async def node_pair(layout: str, folder: Path) -> AsyncIterator[tuple[reign.Node, reign.Node]]:
    """``(server_node, client_node)``: the same node for ``local``/``checked``, two connected
    TLS nodes for ``remote``."""
    if layout in ("local", "checked"):
        async with reign.no_clustering(check_messages=layout == "checked") as node:
            yield node, node
        return
    spec = make_cluster(folder, [1, 2])
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await n1.wait_connected(2, timeout=20)
        await n2.wait_connected(1, timeout=20)
        yield n1, n2


def seen_from(node: reign.Node, addr: reign.Address) -> reign.Address:
    """``addr`` as ``node`` knows it (bound to ``node``, as if it had arrived in a message)."""
    return node.address(bytes(addr))


async def watch(node: reign.Node, addr: reign.Address) -> reign.Mailbox:
    """A mailbox of ``node`` that will receive ``MailboxClosed`` of ``addr``."""
    watcher, mbox = node.new_mailbox()
    seen_from(node, addr).on_close_notify(watcher)
    return mbox


async def closed_reason(mbox: reign.Mailbox) -> Any:
    """The reason of the next ``MailboxClosed`` arriving in ``mbox``."""
    msg = await mbox.receive(timeout=GUARD)
    assert isinstance(msg, reign.MailboxClosed), msg
    return msg.reason


async def settle(rounds: int = 5) -> None:
    """Let the loop run a few iterations (for local message passing to finish)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def wait_until(predicate: Any, timeout: float = GUARD) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.002)


class Probe(reign.GenServer):
    """Records every callback in ``log``; requests drive it (see :meth:`handle_call`)."""

    log: list[Any]
    held: dict[Any, reign.Caller]

    async def init(self, log: list[Any], *args: Any, trap: bool = False, block_terminate: Any = None,
                   **kwargs: Any) -> None:
        self.log = log
        self.held = {}
        self.block_terminate = block_terminate
        if trap:
            self.trap_exits = True
        log.append(("init", args, kwargs))

    async def handle_call(self, request: Any, caller: reign.Caller) -> Any:
        self.log.append(("call", request))
        match request:
            case ("echo", value):
                return value
            case ("fail", kind, message, payload):
                raise reign.Failure(kind, message, payload)
            case ("crash", message):
                raise ValueError(message)
            case ("hold", key):
                self.held[key] = caller
                return reign.NOREPLY
            case ("forward", key, worker):  # another process answers in our place
                worker.send(("answer", caller, key))
                return reign.NOREPLY
            case ("stop", reason, reply):
                self.stop(reason)
                return reply
            case ("call_self",):
                try:
                    await reign.call(self.address, ("echo", 1), timeout=None)
                except reign.SelfCallError as exc:
                    return ("refused", type(exc).__name__)
                return "called"
            case ("stop_self",):
                try:
                    await reign.stop(self.address, timeout=None)
                except reign.SelfCallError as exc:
                    return ("refused", type(exc).__name__)
                return "stopped"
            case ("link", addr):
                self.mailbox.link(addr)
                return "linked"
            case ("send_after", seconds, msg):
                self.timer = reign.send_after(seconds, self.address, msg)
                return "armed"
        raise reign.Failure("unknown", repr(request))

    async def handle_cast(self, msg: Any) -> None:
        self.log.append(("cast", msg))
        match msg:
            case ("release", key, value):
                self.held.pop(key).reply(value)
            case ("release", key, value, notify):
                self.held.pop(key).reply(value)
                notify.send(("released", key))
            case ("crash", message):
                raise ValueError(message)
            case ("fail", kind):
                raise reign.Failure(kind)
            case ("stop", reason):
                self.stop(reason)

    async def handle_info(self, msg: Any) -> None:
        self.log.append(("info", msg))
        match msg:
            case ("crash", message):
                raise ValueError(message)
            case ("fail", kind):
                raise reign.Failure(kind)

    async def terminate(self, reason: Any) -> None:
        self.log.append(("terminate", reason))
        if self.block_terminate is not None:
            await self.block_terminate.wait()


async def answerer(mbox: reign.Mailbox) -> None:
    """A process that answers forwarded calls: ``("answer", caller, value)`` -> ``caller.reply(value)``."""
    async for msg in mbox:
        if isinstance(msg, tuple) and msg[0] == "answer":
            msg[1].reply(("answered", msg[2]))


class Worker(reign.GenServer):
    """A supervised child. ``events`` (a list the test holds) gets ``("start", tag, extra)`` when
    it starts and ``("stop", tag, reason)`` when its ``terminate`` runs. It traps exits unless
    ``trap=False`` (so a supervisor's ``"shutdown"`` runs ``terminate``); ``control["fail"]``
    (a set of tags) makes its ``init`` raise; ``control["hang"]`` (a set of tags) makes its
    ``terminate`` never return (a child that ignores shutdown)."""

    async def init(self, events: list[Any], tag: Any, *extra: Any, trap: bool = True,
                   control: dict[str, Any] | None = None) -> None:
        self.events = events
        self.tag = tag
        self.control = control if control is not None else {}
        if tag in self.control.get("fail", ()):
            events.append(("start_failed", tag))
            raise RuntimeError(f"{tag} cannot start")
        self.trap_exits = trap
        events.append(("start", tag, extra))

    async def handle_call(self, request: Any, caller: reign.Caller) -> Any:
        match request:
            case "whoami":
                return (self.tag, self.address)
            case ("exit", reason):
                self.stop(reason)
                return "ok"
        raise reign.Failure("unknown", repr(request))

    async def handle_cast(self, msg: Any) -> None:
        match msg:
            case "crash":
                raise RuntimeError(f"{self.tag} crashed")
            case ("exit", reason):
                self.stop(reason)

    async def handle_info(self, msg: Any) -> None:
        self.events.append(("info", self.tag, msg))

    async def terminate(self, reason: Any) -> None:
        self.events.append(("stop", self.tag, reason))
        if self.tag in self.control.get("hang", ()):
            await asyncio.Event().wait()


def worker(events: list[Any], tag: Any, *, restart: str = "permanent", shutdown: Any = None,
           **kwargs: Any) -> reign.ChildSpec:
    """The ChildSpec of a :class:`Worker` with id ``tag``."""
    return reign.ChildSpec(id=tag, start=Worker, args=(events, tag), kwargs=kwargs,
                           restart=restart, shutdown=shutdown)  # type: ignore[arg-type]


async def children(sup: reign.Address) -> dict[Any, reign.Address | None]:
    """``which_children`` as a dict id -> address (for one_for_* supervisors)."""
    return dict(await reign.Supervisor.which_children(sup))


async def wait_children(sup: reign.Address, predicate: Any, timeout: float = GUARD) -> list[tuple[Any, Any]]:
    """Poll ``which_children`` until ``predicate(list)`` holds; returns that list."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        current = await reign.Supervisor.which_children(sup)
        if predicate(current):
            return current
        if loop.time() > deadline:
            raise TimeoutError(f"children never matched: {current}")
        await asyncio.sleep(0.002)
