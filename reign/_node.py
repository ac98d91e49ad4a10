"""Node: owns mailboxes, routes sends, and (when clustered) the connections to its peers.

Invariants:

* A node has an id (0..255) and an incarnation fixed when the object is created; every mailbox
  it creates gets ``MailboxID(id, incarnation, serial)`` with a serial never reused by it.
* ``_mailboxes`` maps serial -> open Mailbox; a mailbox leaves it when it closes.
* All mutable state is touched on the loop thread the node is bound to. The node binds to the
  running loop on ``start()`` or on first use inside a loop; before that it is single-threaded.
  Calls from other threads are forwarded with ``call_soon_threadsafe``.
* Nothing here is global: several nodes may live in one process and one loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from threading import get_ident
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ._address import Address
from ._ids import MAX_NODE_ID, MailboxID, new_incarnation, parse_mailbox_id
from ._mailbox import Mailbox, notify_closed

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "Node",
    "NodeStatistics",
    "no_clustering",
    "create_from_spec",
    "create_from_spec_file",
    "run",
]

_log = structlog.get_logger("reign.node")

ConnectionStatusCallback = Callable[[int, bool], object]


class _Cluster(Protocol):
    """What a node needs from its connection manager (see ``_cluster.py``)."""

    def route(self, mailbox_id: MailboxID, msg: Any) -> bool: ...
    def link(self, target: MailboxID, watcher: Address) -> None: ...
    def unlink(self, target: MailboxID, watcher: Address) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """A snapshot of a node (``node.statistics()``).

    ``peers`` maps each other node of the spec to its :class:`reign.PeerStatistics` (empty on a
    ``no_clustering()`` node).
    """

    node: int
    incarnation: int
    mailboxes: int
    peers: Mapping[int, Any]


class Node:
    """A reign node. Create with :func:`no_clustering` or ``create_from_spec[_file]``.

    Use ``async with node:`` (or ``await node.start()`` / ``await node.stop()``) around its
    life. ``stop`` closes every mailbox and connection and is idempotent.
    """

    def __init__(self, node_id: int) -> None:
        if type(node_id) is not int or not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id must be an int in 0..{MAX_NODE_ID}, got {node_id!r}")
        self._id = node_id
        self._incarnation = new_incarnation()
        self._serials = itertools.count(1)
        self._mailboxes: dict[int, Mailbox] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._status_callbacks: list[ConnectionStatusCallback] = []
        self._closed_hooks: list[Callable[[Mailbox], object]] = []
        self._cluster: _Cluster | None = None
        self._started = False
        self._stopped = False
        self._log = _log.bind(node=node_id, incarnation=self._incarnation)
        from ._names import Names

        self._names = Names(self)

    def __repr__(self) -> str:
        return f"<reign.Node {self._id} incarnation={self._incarnation}>"

    # ---------------------------------------------------------------- identity

    @property
    def id(self) -> int:
        """This node's id, 0..255."""
        return self._id

    @property
    def incarnation(self) -> int:
        """Chosen when the node object is created; differs between runs of the same node id."""
        return self._incarnation

    @property
    def names(self) -> Any:
        """The global name registry as seen from this node (:class:`reign.Names`)."""
        return self._names

    # ---------------------------------------------------------------- mailboxes

    def new_mailbox(self) -> tuple[Address, Mailbox]:
        """Create a mailbox on this node; returns ``(address, mailbox)``.

        Raises :class:`RuntimeError` after the node was stopped.
        """
        if self._stopped:
            raise RuntimeError(f"node {self._id} is stopped; it creates no more mailboxes")
        if self._loop is None:
            try:
                self._bind_loop()
            except RuntimeError:
                pass  # no running loop yet: bind on first use
        serial = next(self._serials)
        mbox = Mailbox(self, MailboxID(self._id, self._incarnation, serial))
        self._mailboxes[serial] = mbox
        return mbox.address, mbox

    def address(self, data: str | bytes | bytearray | memoryview) -> Address:
        """Parse the text (``<N.I.S>``) or binary form of an address, bound to this node.

        Raises :class:`reign.IllegalAddressFormatError` for anything else.
        """
        mailbox_id = parse_mailbox_id(data)
        return self._address_for(mailbox_id)

    def _address_for(self, mailbox_id: MailboxID) -> Address:
        mbox = None
        if mailbox_id.node == self._id and mailbox_id.incarnation == self._incarnation:
            mbox = self._mailboxes.get(mailbox_id.serial)
        return mbox.address if mbox is not None else Address(mailbox_id, self)

    def _mailbox_closed(self, mbox: Mailbox) -> None:
        self._mailboxes.pop(mbox.id.serial, None)
        for hook in self._closed_hooks:
            hook(mbox)

    # ---------------------------------------------------------------- routing and links

    def _route(self, mailbox_id: MailboxID, msg: Any) -> bool:
        """Send to an address that has no cached local mailbox. Any thread."""
        if mailbox_id.node == self._id:
            if mailbox_id.incarnation != self._incarnation:
                return False
            mbox = self._mailboxes.get(mailbox_id.serial)
            if mbox is None:
                return False
            return mbox.address.send(msg)
        cluster = self._cluster
        if cluster is None:
            return False
        return cluster.route(mailbox_id, msg)

    def _link(self, target: MailboxID, watcher: Address) -> None:
        """Register ``watcher`` for the close of ``target`` (loop thread)."""
        watching = watcher._mbox
        if watching is not None and not watching._closed:
            if watching._watching is None:
                watching._watching = set()
            watching._watching.add(target)  # unlinked when the watcher closes
        if target.node == self._id:
            mbox = None
            if target.incarnation == self._incarnation:
                mbox = self._mailboxes.get(target.serial)
            if mbox is None or mbox._closed:
                notify_closed(target, watcher)
            else:
                mbox._add_watcher(watcher)
        elif self._cluster is None:
            notify_closed(target, watcher)
        else:
            self._cluster.link(target, watcher)

    def _unlink(self, target: MailboxID, watcher: Address) -> None:
        watching = watcher._mbox
        if watching is not None and watching._watching:
            watching._watching.discard(target)
        if target.node == self._id:
            if target.incarnation == self._incarnation:
                mbox = self._mailboxes.get(target.serial)
                if mbox is not None:
                    mbox._remove_watcher(watcher)
        elif self._cluster is not None:
            self._cluster.unlink(target, watcher)

    # ---------------------------------------------------------------- loop binding

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._thread_id = get_ident()
        return loop

    def _call_on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        thread_id = self._thread_id
        if thread_id is None or thread_id == get_ident():
            fn(*args)
        else:
            try:
                self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]
            except RuntimeError:  # the loop is closed: the node and its mailboxes are gone
                pass

    # ---------------------------------------------------------------- cluster introspection

    def statistics(self) -> NodeStatistics:
        """A frozen snapshot: open mailboxes and, per peer, state, queues, counters, last tick."""
        peers = self._cluster.statistics() if self._cluster is not None else {}  # type: ignore[attr-defined]
        return NodeStatistics(self._id, self._incarnation, len(self._mailboxes), peers)

    async def wait_drained(self, node_id: int | None = None, *, timeout: float | None = None) -> None:
        """Wait until the outbound buffer toward ``node_id`` (every peer if None) is below its
        high-water mark (like Erlang's busy distribution port).

        ``send`` never blocks; a fast producer awaits this between bursts so it cannot outrun a
        slow link. While a peer is not connected, its pending buffer counts. Raises
        :class:`TimeoutError` after ``timeout`` seconds and :class:`KeyError` for a node id not
        in the spec. Returns at once on a ``no_clustering()`` node.
        """
        if self._cluster is None:
            return
        if node_id is not None and node_id not in self._cluster.peers:  # type: ignore[attr-defined]
            raise KeyError(f"node {node_id} is not a peer of node {self._id}")
        await self._cluster.wait_drained(node_id, timeout)  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- connection status

    def add_connection_status_callback(self, fn: ConnectionStatusCallback) -> None:
        """Call ``fn(node_id, connected)`` on the loop whenever a peer comes up or goes down.

        Exceptions raised by ``fn`` are logged (``node.status_callback.failed``) and ignored.
        """
        self._status_callbacks.append(fn)

    def _connection_status(self, node_id: int, connected: bool) -> None:
        for fn in list(self._status_callbacks):
            try:
                fn(node_id, connected)
            except Exception:
                self._log.exception("node.status_callback.failed", peer=node_id)

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Bind to the running loop and, when clustered, listen and dial the peers.

        Calling it again while started does nothing. Raises :class:`RuntimeError` after stop.
        """
        if self._stopped:
            raise RuntimeError(f"node {self._id} was stopped and cannot start again")
        if self._started:
            return
        loop = self._bind_loop()
        if self._thread_id != get_ident() or loop is not asyncio.get_running_loop():
            raise RuntimeError("a node must be started on the loop it was first used on")
        self._started = True
        if self._cluster is not None:
            try:
                await self._cluster.start()
            except BaseException:
                await self.stop()
                raise
        self._log.info("node.started")

    async def stop(self) -> None:
        """Close every mailbox, then every connection. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for mbox in list(self._mailboxes.values()):
            mbox.close()
        if self._cluster is not None:
            await self._cluster.stop()
        self._log.info("node.stopped")

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def no_clustering() -> Node:
    """A node with id 0 and no network: every local feature works; other nodes are unreachable."""
    return Node(0)


def create_from_spec(spec: Any, node_id: int) -> Node:
    """A clustered node ``node_id`` of ``spec`` (a :class:`reign.ClusterSpec` or parsed JSON).

    Credentials are read and checked now, so a bad spec or certificate fails here with
    :class:`reign.ClusterSpecError`; nothing listens or dials until ``start()``.
    """
    from ._cluster import Cluster
    from ._errors import ClusterSpecError
    from ._spec import ClusterSpec

    if isinstance(spec, Mapping):
        spec = ClusterSpec.from_dict(spec)
    elif not isinstance(spec, ClusterSpec):
        raise ClusterSpecError(f"spec must be a ClusterSpec or a dict, not {type(spec).__name__}")
    if type(node_id) is not int:
        raise ClusterSpecError(f"node id must be an int, not {type(node_id).__name__}")
    spec.node(node_id)
    node = Node(node_id)
    node._cluster = Cluster(node, spec, node_id)
    node._names._attach_cluster(node._cluster)
    return node


def create_from_spec_file(path: str | os.PathLike[str], node_id: int) -> Node:
    """:func:`create_from_spec` with the spec loaded (and validated) from a JSON file."""
    from ._spec import ClusterSpec

    return create_from_spec(ClusterSpec.load(path), node_id)


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` to completion on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at run time
        return asyncio.run(main)
    return uvloop.run(main)
