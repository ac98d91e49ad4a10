"""The global name registry of one node (``node.names``): the asyncio half of the registry.

What the registry *decides* lives in :mod:`reign._registry_state` (pure, tested exhaustively);
this module feeds it local events and what peers replicate, and carries out its effects:
``MultipleClaim(name)`` to local claimants, replicated changes to every up peer.

Invariants
----------
* All registry state is mutated on the node's loop thread only. ``register`` and
  ``unregister`` validate in the caller's thread and forward the change with
  ``node.binding.call``; the loop re-checks that the mailbox is still open (a mailbox that
  closed in between claims nothing). Queries read the state from any thread.
* A claim is held only while its mailbox is open: the node's closed-mailbox hook drops every
  claim of a closing mailbox, on the loop, before the close returns there.
* ``_up`` is the set of peers that have been sent our snapshot on their current connection.
  Every local change is sent, as it happens, to exactly those peers, after the snapshot; so
  each peer sees the snapshot, then every later change, in order (one connection per peer,
  frames in order). A peer joins ``_up`` in the cluster's peer-up hook and leaves it in the
  peer-down hook, where the state forgets its claims (``node_lost``).
* Every CONTROL payload we send fits the peer's frame limit: names are at most
  :data:`MAX_NAME_BYTES` UTF-8 bytes, and lists of claims are cut by an upper bound of their
  encoded size (:data:`CHUNK_BYTES`, :data:`CHUNK_CLAIMS`, the spec's ``max_message_bytes``).

Registry protocol, version 1 (CONTROL frame payloads, CBOR lists; first item is the kind)
----------------------------------------------------------------------------------------
A node only ever sends its *own* claims, so a claimant travels as its serial alone: the owner
is the sending node, at the incarnation its HELLO announced on this connection.

=====================================  ==========================================================
``["reg.begin"]``                       a snapshot of all the sender's claims follows
``["reg.chunk", [name, serial, ...]]``  part of it, flat pairs
``["reg.end"]``                         the snapshot is complete: it replaces what was known
``["reg.changes", [op, name, serial,   claims added (op ``"+"``) or removed (``"-"``) since,
...]]``                                 in order
``["reg.sync", seq]``                   answer when everything before this frame is applied
``["reg.synced", seq]``                 that answer
=====================================  ==========================================================

Anything else (an unknown kind, a wrong shape, a change in the middle of a snapshot) is a
:class:`~reign.ProtocolError`, which closes that connection; the peer redials and resends its
snapshot. Log events (logger ``reign.names``): ``names.snapshot.sent``,
``names.snapshot.merged``, ``names.multiple_claim``, ``names.sync.timeout``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._core.address import Address
from .._core.ids import MailboxID, mailbox_id_from_parts
from .._core.messages import MultipleClaim
from .._core.registry import Effects, RegistryState
from .._errors import CantGloballyRegisterError, ProtocolError
from .log import get_logger
from .loop import LoopBinding

if TYPE_CHECKING:
    from .mailbox import Mailbox

__all__ = ["Names", "MAX_NAME_BYTES", "SYNC_TIMEOUT", "CHUNK_CLAIMS", "CHUNK_BYTES"]

_log = get_logger("reign.names")

#: Longest name, in UTF-8 bytes. Erlang's registered names are atoms of at most 255
#: characters; 512 bytes allows as much for mostly-ASCII text while one claim (name, serial and
#: framing, under 560 bytes) always fits the smallest ``max_message_bytes`` a spec allows (1 KiB).
MAX_NAME_BYTES = 512
#: Default seconds ``sync()`` waits for every peer's answer. A peer answers as soon as it has
#: read what was sent before; Erlang's ``global:sync/0`` waits forever, a hung peer should
#: not hang the caller forever, and 30 s is well past any net_ticktime-sized hiccup in tests.
SYNC_TIMEOUT = 30.0
#: Most claims in one CONTROL frame: 5,000 claims of short names are ~100 KiB, so a 100k-name
#: snapshot is 20 frames and no frame holds the loop (encode or decode) for more than ~5 ms.
CHUNK_CLAIMS = 5000
#: Upper bound of one frame's encoded claims, in bytes (further capped by the spec's
#: ``max_message_bytes``): large enough to amortise framing, small enough to interleave.
CHUNK_BYTES = 256 * 1024
#: Bytes of a claim's encoding besides its name's UTF-8 bytes, at most: a text-string header
#: (<= 9), a serial (<= 9), an op (2).
_CLAIM_OVERHEAD = 20
#: Bytes reserved for the envelope around a list of claims (kind and array headers).
_ENVELOPE_BYTES = 64
#: How often a query from a foreign thread retries when the loop mutated the set it was reading.
_QUERY_RETRIES = 100

_ADD = "+"
_REMOVE = "-"

_T = TypeVar("_T")


def _utf8_size(name: str) -> int:
    return len(name) if name.isascii() else len(name.encode("utf-8", "surrogatepass"))


def _checked_name(name: object) -> str:
    """``name`` as a plain str, or CantGloballyRegisterError saying why it cannot be one."""
    if not isinstance(name, str):
        raise CantGloballyRegisterError(f"a global name is a str, not {type(name).__name__}")
    name = str.__str__(name)  # a str subclass (a StrEnum member, ...) travels as its text
    if not name:
        raise CantGloballyRegisterError("a global name cannot be empty")
    if not name.isascii():
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise CantGloballyRegisterError(
                f"a global name must be encodable as UTF-8 (no lone surrogates): {name[:80]!r}"
            ) from None
    else:
        size = len(name)
    if size > MAX_NAME_BYTES:
        raise CantGloballyRegisterError(
            f"a global name is at most {MAX_NAME_BYTES} UTF-8 bytes, this one is {size}"
        )
    return name


class NamesHost(Protocol):
    """What the registry needs from its node (``reign._runtime.node.Node``)."""

    @property
    def id(self) -> int: ...
    @property
    def incarnation(self) -> int: ...
    @property
    def binding(self) -> LoopBinding: ...
    def local_mailbox(self, mailbox_id: MailboxID) -> Mailbox | None: ...
    def address_for(self, mailbox_id: MailboxID) -> Address: ...
    def add_close_listener(self, fn: Callable[[Mailbox], object]) -> None: ...


class ControlChannel(Protocol):
    """What the registry needs from the node's connector (``reign._runtime.cluster.Cluster``)."""

    max_message_bytes: int

    def send_control(self, peer_id: int, payload: Any) -> bool: ...
    def add_listener(self, listener: Any) -> None: ...


class Names:
    """The cluster-wide name registry as seen from one node (``node.names``).

    A name may have several claimants (mailboxes, on any nodes). When a name gains a claimant,
    every claimant of it, the newest included, receives :class:`reign.MultipleClaim` once,
    whether the conflict comes from a register here, a register elsewhere, or nodes
    (re)connecting. A claim disappears when its mailbox closes, when it is unregistered and
    when its node is lost. ``register`` and ``unregister`` are safe from any thread; the
    queries too; ``sync`` is awaited on the node's loop.
    """

    def __init__(self, node: NamesHost, cluster: ControlChannel | None) -> None:
        self._node = node
        self._state = RegistryState(node.id)
        self._cluster = cluster
        self._up: set[int] = set()
        self._sync_seq = itertools.count(1)
        self._syncs: dict[int, tuple[asyncio.Future[None], set[int]]] = {}
        self._name_waiters: dict[str, list[asyncio.Future[None]]] = {}  # wait_for
        self._received: dict[int, int] = {}  # peer -> claims of its snapshot so far (for logs)
        self._log = _log.bind(node=node.id)
        self._handlers: dict[str, Callable[[int, list[Any]], None]] = {
            "reg.begin": self._on_begin,
            "reg.chunk": self._on_chunk,
            "reg.end": self._on_end,
            "reg.changes": self._on_changes,
            "reg.sync": self._on_sync,
            "reg.synced": self._on_synced,
        }
        node.add_close_listener(self._mailbox_closed)
        if cluster is not None:
            cluster.add_listener(self)

    def __repr__(self) -> str:
        state = self._state
        return f"<reign.Names node={self._node.id} {state!r}>"

    # ------------------------------------------------------------------------- public API

    def register(self, name: str, addr: Address) -> None:
        """Claim ``name`` for ``addr``, a live mailbox of this node; a no-op if already claimed.

        The claim replicates to every connected node (and to nodes that connect later). From
        another thread the claim is made when the loop next runs; if the mailbox closes first,
        nothing is claimed. Raises :class:`reign.CantGloballyRegisterError` if ``addr`` is not
        an Address of an open mailbox created by this node, or ``name`` is not a non-empty str
        of at most :data:`MAX_NAME_BYTES` UTF-8 bytes.
        """
        name = _checked_name(name)
        if type(addr) is not Address:
            raise CantGloballyRegisterError(f"only an Address can claim a name, not {type(addr).__name__}")
        if not self._is_live(addr.id):
            node = self._node
            raise CantGloballyRegisterError(
                f"{addr} is not an open mailbox of node {node.id} (incarnation {node.incarnation}); "
                "only a live local mailbox can claim a global name"
            )
        self._node.binding.call(self._register, name, addr.id)

    def unregister(self, name: str, addr: Address) -> None:
        """Withdraw ``addr``'s claim on ``name``; other claimants keep theirs.

        Ignored if ``addr`` does not claim ``name`` here (including claims of other nodes: each
        node withdraws only its own). Safe from any thread.
        """
        if isinstance(name, str) and type(addr) is Address and addr.id.node == self._node.id:
            self._node.binding.call(self._unregister, str.__str__(name), addr.id)

    def lookup(self, name: str) -> Address | None:
        """The claimant of ``name`` with the smallest ``(node, incarnation, serial)``, or None.

        Every node with the same view of the registry answers the same.
        """
        if not isinstance(name, str):
            return None
        mbox_id = self._query(self._state.lookup, name)
        return None if mbox_id is None else self._node.address_for(mbox_id)

    def lookup_all(self, name: str) -> list[Address]:
        """Every claimant of ``name`` in this node's view, smallest first (empty if none)."""
        if not isinstance(name, str):
            return []
        address_for = self._node.address_for
        return [address_for(m) for m in self._query(self._state.lookup_all, name)]

    def seen_names(self, *names: str) -> list[bool]:
        """For each of ``names``, whether this node knows at least one claimant of it."""
        seen = self._state.seen
        return [isinstance(name, str) and seen(name) for name in names]

    def send(self, name: str, msg: Any) -> bool:
        """Send ``msg`` to :meth:`lookup` (``name``), like Erlang's ``global:send/2``.

        Returns ``False`` if ``name`` has no claimant in this node's view, else what
        ``Address.send`` returns. Never blocks; safe from any thread.
        """
        addr = self.lookup(name)
        return False if addr is None else addr.send(msg)

    @property
    def multiple_claim_count(self) -> int:
        """Number of names with two or more claimants in this node's view."""
        return self._state.multiple_claim_count

    async def sync(self, *, timeout: float | None = SYNC_TIMEOUT) -> None:
        """Return once every connected node has applied this node's earlier changes.

        Each up peer is asked to answer after everything this node sent it before the question;
        a peer that goes down meanwhile counts as answered (it no longer holds our claims, and
        gets a fresh snapshot when it returns). Returns at once on a ``no_clustering()`` node
        or with no peer up. Raises :class:`TimeoutError` naming the silent nodes after
        ``timeout`` seconds (``None``: wait as long as they stay connected). Must be awaited on
        the node's loop (``RuntimeError`` otherwise).
        """
        self._node.binding.require_loop_thread("names.sync()")
        cluster = self._cluster
        if cluster is None or not self._up:
            return
        seq = next(self._sync_seq)
        waiting = {peer for peer in self._up if cluster.send_control(peer, ["reg.sync", seq])}
        if not waiting:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[seq] = (future, waiting)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            self._log.warning("names.sync.timeout", silent=sorted(waiting), timeout=timeout)
            raise TimeoutError(
                f"names.sync: node(s) {sorted(waiting)} did not answer within {timeout:g} s"
            ) from None
        finally:
            self._syncs.pop(seq, None)

    # ------------------------------------------------------------------------- local side

    def _is_live(self, mbox_id: MailboxID) -> bool:
        mbox = self._node.local_mailbox(mbox_id)
        return mbox is not None and not mbox.closed

    def _register(self, name: str, mbox_id: MailboxID) -> None:
        """Loop thread: claim, unless the mailbox closed since ``register`` checked it."""
        if self._is_live(mbox_id):
            self._apply(self._state.register_local(name, mbox_id))
            if self._name_waiters:
                self._wake_waiters()

    async def wait_for(self, name: str, *, timeout: float | None = None) -> Address:
        """The claimant of ``name`` (as :meth:`lookup` gives it), once the name is visible here.

        Returns at once if it is; otherwise when a registration here or from a peer makes it
        visible (no polling). Raises :class:`TimeoutError` after ``timeout`` seconds,
        :class:`reign.CantGloballyRegisterError` for something that cannot be a name, and
        RuntimeError off the node's loop.
        """
        loop = self._node.binding.require_loop_thread("names.wait_for()")
        name = _checked_name(name)
        async with asyncio.timeout(timeout):
            while True:
                found = self.lookup(name)
                if found is not None:
                    return found
                future: asyncio.Future[None] = loop.create_future()
                waiters = self._name_waiters.setdefault(name, [])
                waiters.append(future)
                try:
                    await future
                finally:
                    if future in waiters:
                        waiters.remove(future)
                    if not waiters and self._name_waiters.get(name) is waiters:
                        del self._name_waiters[name]

    def _wake_waiters(self) -> None:
        """Resolve the ``wait_for`` calls whose name is now visible."""
        seen = self._state.seen
        for name, waiters in list(self._name_waiters.items()):
            if seen(name):
                for future in waiters:
                    if not future.done():
                        future.set_result(None)

    def _unregister(self, name: str, mbox_id: MailboxID) -> None:
        self._apply(self._state.unregister_local(name, mbox_id))

    def _mailbox_closed(self, mbox: Mailbox) -> None:
        """The node's closed-mailbox hook (loop thread): drop every claim of ``mbox``."""
        mbox_id = mbox.id
        if mbox_id.node == self._node.id and self._state.names_of(mbox_id):
            self._apply(self._state.mailbox_closed(mbox_id))

    def _apply(self, effects: Effects) -> None:
        """Carry out what the state decided: notify local claimants, replicate our changes."""
        if effects.notify:
            self._notify(effects.notify)
        if effects.broadcast and self._up:
            flat: list[Any] = []
            for change in effects.broadcast:
                flat += (_ADD if change.kind == "add" else _REMOVE, change.name, change.claimant.serial)
            for payload in self._framed("reg.changes", flat, 3):
                self._send_to_up(payload)

    def _notify(self, notify: tuple[tuple[MailboxID, str], ...]) -> None:
        local_mailbox = self._node.local_mailbox
        for mbox_id, name in notify:
            mbox = local_mailbox(mbox_id)
            if mbox is not None:
                mbox.deliver(MultipleClaim(name))
        names = sorted({name for _, name in notify})
        self._log.info(
            "names.multiple_claim", names=names[:10], name_count=len(names), notified=len(notify)
        )

    def _send_to_up(self, payload: list[Any]) -> None:
        cluster = self._cluster
        assert cluster is not None
        for peer in list(self._up):
            cluster.send_control(peer, payload)

    def _framed(self, kind: str, flat: list[Any], stride: int) -> Iterable[list[Any]]:
        """Cut ``flat`` (records of ``stride`` items, the name second to last) into payloads
        ``[kind, part]`` that each fit one CONTROL frame."""
        cluster = self._cluster
        budget = CHUNK_BYTES
        if cluster is not None:
            budget = min(budget, cluster.max_message_bytes)
        budget -= _ENVELOPE_BYTES
        start = 0
        size = 0
        count = 0
        for end in range(0, len(flat), stride):
            claim_size = _utf8_size(flat[end + stride - 2]) + _CLAIM_OVERHEAD
            if count and (size + claim_size > budget or count >= CHUNK_CLAIMS):
                yield [kind, flat[start:end]]
                start, size, count = end, 0, 0
            size += claim_size
            count += 1
        if count:
            yield [kind, flat[start:]]

    # ------------------------------------------------------------------------- peers

    def peer_up(self, peer: int, incarnation: int) -> None:
        """Cluster listener (loop): record the peer's incarnation, send it our whole snapshot."""
        cluster = self._cluster
        assert cluster is not None
        self._apply(self._state.node_incarnation(peer, incarnation))
        flat: list[Any] = []
        for name, mbox_id in self._state.local_snapshot():
            flat += (name, mbox_id.serial)
        cluster.send_control(peer, ["reg.begin"])
        chunks = 0
        for payload in self._framed("reg.chunk", flat, 2):
            cluster.send_control(peer, payload)
            chunks += 1
        cluster.send_control(peer, ["reg.end"])
        self._up.add(peer)
        self._log.debug("names.snapshot.sent", peer=peer, claims=len(flat) // 2, chunks=chunks)

    def peer_down(self, peer: int) -> None:
        """Cluster listener (loop): forget the peer's claims; it no longer holds up a sync."""
        self._up.discard(peer)
        self._received.pop(peer, None)
        self._apply(self._state.node_lost(peer))
        for future, waiting in list(self._syncs.values()):
            waiting.discard(peer)
            if not waiting and not future.done():
                future.set_result(None)

    def control(self, peer: int, payload: Any) -> None:
        """Cluster listener (loop): one registry frame from ``peer``.

        Raises :class:`reign.ProtocolError` for anything a correct peer never sends.
        """
        if type(payload) is not list or not payload or type(payload[0]) is not str:
            raise ProtocolError(f"registry frame from node {peer} is not a [kind, ...] list")
        handler = self._handlers.get(payload[0])
        if handler is None:
            raise ProtocolError(f"unknown registry frame {payload[0]!r:.40} from node {peer}")
        try:
            handler(peer, payload)
        except ValueError as exc:  # the state refused the data: the peer broke the protocol
            raise ProtocolError(f"registry frame {payload[0]} from node {peer}: {exc}") from None
        finally:
            if self._name_waiters:
                self._wake_waiters()

    def _claimants(self, peer: int) -> Callable[[Any], MailboxID]:
        """A function serial -> MailboxID of ``peer``'s current run, validating the serial.

        It hands out one object per serial (a frame's claims mostly share few mailboxes), which
        halves the time a 100k-claim snapshot spends allocating and collecting garbage.
        """
        incarnation = self._state.incarnation_of(peer)
        if incarnation is None:  # pragma: no cover - the up hook runs before any frame
            raise ProtocolError(f"registry frame from node {peer} before it came up")
        cache: dict[int, MailboxID] = {}

        def claimant(serial: Any) -> MailboxID:
            if type(serial) is int:  # (a float key would find an int's entry)
                mbox_id = cache.get(serial)
                if mbox_id is not None:
                    return mbox_id
            mbox_id = cache[serial] = mailbox_id_from_parts(peer, incarnation, serial)
            return mbox_id

        return claimant

    def _on_begin(self, peer: int, payload: list[Any]) -> None:
        _expect_len(payload, 1, peer)
        self._state.begin_snapshot(peer)
        self._received[peer] = 0

    def _on_chunk(self, peer: int, payload: list[Any]) -> None:
        flat = _flat_records(payload, 2, peer)
        claimant = self._claimants(peer)
        self._state.snapshot_chunk(peer, [(flat[i], claimant(flat[i + 1])) for i in range(0, len(flat), 2)])
        self._received[peer] = self._received.get(peer, 0) + len(flat) // 2

    def _on_end(self, peer: int, payload: list[Any]) -> None:
        _expect_len(payload, 1, peer)
        self._apply(self._state.end_snapshot(peer))
        self._log.debug("names.snapshot.merged", peer=peer, claims=self._received.pop(peer, 0))

    def _on_changes(self, peer: int, payload: list[Any]) -> None:
        flat = _flat_records(payload, 3, peer)
        state = self._state
        claimant = self._claimants(peer)
        notify: list[tuple[MailboxID, str]] = []
        try:
            for i in range(0, len(flat), 3):
                op, name, mbox_id = flat[i], flat[i + 1], claimant(flat[i + 2])
                if op == _ADD:
                    notify += state.remote_add(name, mbox_id).notify
                elif op == _REMOVE:
                    state.remote_remove(name, mbox_id)
                else:
                    raise ProtocolError(f"unknown registry change {op!r:.20} from node {peer}")
        finally:  # changes applied before a bad one still notify (the state remembers them)
            if notify:
                self._notify(tuple(notify))

    def _on_sync(self, peer: int, payload: list[Any]) -> None:
        _expect_len(payload, 2, peer)
        seq = _seq(payload[1], peer)
        cluster = self._cluster
        assert cluster is not None
        cluster.send_control(peer, ["reg.synced", seq])

    def _on_synced(self, peer: int, payload: list[Any]) -> None:
        _expect_len(payload, 2, peer)
        entry = self._syncs.get(_seq(payload[1], peer))
        if entry is None:
            return  # that sync already timed out
        future, waiting = entry
        waiting.discard(peer)
        if not waiting and not future.done():
            future.set_result(None)

    # ------------------------------------------------------------------------- queries

    def _query(self, fn: Callable[[str], _T], name: str) -> _T:
        """``fn(name)``; from a foreign thread, retried if the loop changed a set under it."""
        if self._node.binding.on_loop_thread():
            return fn(name)
        for _ in range(_QUERY_RETRIES):
            try:
                return fn(name)
            except RuntimeError:  # "Set changed size during iteration"
                continue
        return fn(name)




def _expect_len(payload: list[Any], length: int, peer: int) -> None:
    if len(payload) != length:
        raise ProtocolError(f"registry frame {payload[0]} from node {peer} has {len(payload)} items")


def _flat_records(payload: list[Any], stride: int, peer: int) -> list[Any]:
    _expect_len(payload, 2, peer)
    flat = payload[1]
    if type(flat) is not list or len(flat) % stride:
        raise ProtocolError(f"registry frame {payload[0]} from node {peer}: malformed claim list")
    return flat


def _seq(value: Any, peer: int) -> int:
    if type(value) is not int or value < 0:
        raise ProtocolError(f"registry sync from node {peer} with a bad sequence number")
    return value
