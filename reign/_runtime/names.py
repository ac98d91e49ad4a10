"""The global name registry of one node (``node.names``): the asyncio half of the registry.

What the registry *decides* lives in the sans-IO core: :mod:`reign._core.registry` (the state,
pure, tested exhaustively) and :mod:`reign._core.registry_wire` (the frames peers exchange, how
they are checked and applied, and the receiver's limits). This module feeds them local events
and each peer's CONTROL payloads, and carries out what they return: ``MultipleClaim(name)`` to
local claimants, our changes and snapshot to every up peer, sync answers; it owns the clock
(the snapshot deadline, the notice throttle's timer) and the logs.

Invariants
----------
* All registry state is mutated on the node's loop thread only. ``register`` and
  ``unregister`` validate in the caller's thread and forward the change with
  ``node.binding.call``; the loop re-checks that the mailbox is still open (a mailbox that
  closed in between claims nothing). Queries read the state from any thread.
* A claim is held only while its mailbox is open: the node's closed-mailbox hook drops every
  claim of a closing mailbox, on the loop, before the close returns there.
* ``_peers`` holds one :class:`~reign._core.registry_wire.PeerRegistry` per up peer, made in the
  cluster's peer-up hook, where the peer is sent our whole snapshot; every later local change is
  sent, as it happens, to exactly those peers, after the snapshot; so each peer sees the
  snapshot, then every later change, in order (one connection per peer, frames in order). It
  leaves in the peer-down hook, where the state forgets the peer's claims (``node_lost``).
* A peer's snapshot must end within ``registry_snapshot_timeout`` of its connection coming up:
  otherwise its claims are dropped at once (their memory released) and its connection is
  closed as a protocol error (``peer.protocol_error`` with the reason, and
  ``names.snapshot.timeout``).
* ``MultipleClaim`` notices caused by a peer's frames go through one
  :class:`~reign._core.registry_wire.NoticeThrottle`: at most one per claimant and name per
  ``registry_notice_interval``, the rest coalesced into one notice at the interval's end if the
  conflict still stands. Notices caused by this node's own registrations are sent at once.
* Every CONTROL payload we send fits the peer's frame limits: names are at most
  :data:`MAX_NAME_BYTES` UTF-8 bytes, and lists of claims are cut at ``registry_frame_claims``
  records and by an upper bound of their encoded size (``CHUNK_BYTES``, ``max_message_bytes``).

A frame a peer should not have sent (see the limits in :mod:`reign._core.registry_wire`) is a
:class:`~reign.ProtocolError`, which closes that connection (logged as ``peer.protocol_error``
with the reason); the peer redials and resends its snapshot. Log events (logger
``reign.names``): ``names.snapshot.sent``, ``names.snapshot.merged``,
``names.snapshot.timeout`` (warning), ``names.multiple_claim`` (with how many notices were
coalesced since the last one), ``names.register.refused`` (warning: a registration from another
thread that raced past ``registry_peer_claims``), ``names.sync.timeout`` (warning).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._config.spec import ClusterSpec
from .._core.address import Address
from .._core.ids import MailboxID
from .._core.messages import MultipleClaim
from .._core.registry import MAX_NAME_BYTES, Effects, RegistryState, check_name
from .._core.registry_wire import (
    CHANGES,
    CHUNK,
    END,
    NoticeThrottle,
    PeerRegistry,
    RegistryLimits,
    change_payloads,
    snapshot_payloads,
    sync_payload,
)
from .._errors import CantGloballyRegisterError, ProtocolError
from .log import get_logger
from .loop import LoopBinding

if TYPE_CHECKING:
    from .mailbox import Mailbox

__all__ = ["Names", "MAX_NAME_BYTES", "SYNC_TIMEOUT", "registry_limits"]

_log = get_logger("reign.names")

#: Default seconds ``sync()`` waits for every peer's answer. A peer answers as soon as it has
#: read what was sent before; Erlang's ``global:sync/0`` waits forever, a hung peer should
#: not hang the caller forever, and 30 s is well past any net_ticktime-sized hiccup in tests.
SYNC_TIMEOUT = 30.0
#: How often a query from a foreign thread retries when the loop mutated the set it was reading.
_QUERY_RETRIES = 100

_T = TypeVar("_T")


def _checked_name(name: object) -> str:
    """``name`` as a plain str, or CantGloballyRegisterError saying why it cannot be one."""
    if isinstance(name, str):
        name = str.__str__(name)  # a str subclass (a StrEnum member, ...) travels as its text
    try:
        return check_name(name)
    except ValueError as exc:
        raise CantGloballyRegisterError(f"not a valid global name: {exc}") from None


def registry_limits(spec: ClusterSpec | None) -> RegistryLimits:
    """The registry's limits as ``spec`` sets them (the defaults without a spec)."""
    if spec is None:
        return RegistryLimits()
    return RegistryLimits(
        frame_claims=spec.registry_frame_claims,
        peer_claims=spec.registry_peer_claims,
        snapshot_timeout=spec.registry_snapshot_timeout,
        notice_interval=spec.registry_notice_interval,
        max_frame_bytes=spec.max_message_bytes,
    )


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

    @property
    def spec(self) -> ClusterSpec: ...
    def send_control(self, peer_id: int, payload: Any) -> bool: ...
    def disconnect(self, peer_id: int, reason: str) -> bool: ...
    def add_listener(self, listener: Any) -> None: ...


class Names:
    """The cluster-wide name registry as seen from one node (``node.names``).

    A name may have several claimants (mailboxes, on any nodes). When a name gains a claimant,
    every claimant of it, the newest included, receives :class:`reign.MultipleClaim` once,
    whether the conflict comes from a register here, a register elsewhere, or nodes
    (re)connecting; a claimant hears of conflicts that peers cause at most once per name per
    ``registry_notice_interval`` (1 s by default; later ones are coalesced into one notice).
    A claim disappears when its mailbox closes, when it is unregistered and when its node is
    lost. ``register`` and ``unregister`` are safe from any thread; the queries too; ``sync``
    is awaited on the node's loop.
    """

    def __init__(self, node: NamesHost, cluster: ControlChannel | None) -> None:
        self._node = node
        self._state = RegistryState(node.id)
        self._cluster = cluster
        self._limits = registry_limits(None if cluster is None else cluster.spec)
        self._peers: dict[int, PeerRegistry] = {}
        self._deadlines: dict[int, asyncio.TimerHandle] = {}
        self._throttle = NoticeThrottle(self._limits.notice_interval)
        self._flush: asyncio.TimerHandle | None = None
        self._sync_seq = itertools.count(1)
        self._syncs: dict[int, tuple[asyncio.Future[None], set[int]]] = {}
        self._name_waiters: dict[str, list[asyncio.Future[None]]] = {}  # wait_for
        self._log = _log.bind(node=node.id)
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
        an Address of an open mailbox created by this node, if ``name`` is not a non-empty str
        of at most :data:`MAX_NAME_BYTES` UTF-8 bytes, or if this clustered node's claims
        already cost ``registry_peer_claims`` claim units (its peers would refuse more, see
        :func:`reign._core.registry.claim_units`; a claim made from another thread that races
        past the bound is dropped on the loop and logged as ``names.register.refused``).
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
        if not self._room_for(name, addr.id):
            raise CantGloballyRegisterError(self._no_room(name))
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
        if cluster is None or not self._peers:
            return
        seq = next(self._sync_seq)
        waiting = {peer for peer in self._peers if cluster.send_control(peer, sync_payload(seq))}
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
        if not self._is_live(mbox_id):
            return
        if not self._room_for(name, mbox_id):
            self._log.warning("names.register.refused", name=name[:80], reason=self._no_room(name))
            return
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

    def _room_for(self, name: str, mbox_id: MailboxID) -> bool:
        """Whether our peers accept one more claim from us (always, without a cluster)."""
        return self._cluster is None or self._state.local_fits(name, mbox_id, self._limits.peer_claims)

    def _no_room(self, name: str) -> str:
        return (
            f"cannot claim {name[:80]!r}: this node's claims already cost "
            f"{self._state.units_of(self._node.id)} claim units, and its peers accept at most "
            f"{self._limits.peer_claims} (registry_peer_claims)"
        )

    def _unregister(self, name: str, mbox_id: MailboxID) -> None:
        self._apply(self._state.unregister_local(name, mbox_id))

    def _mailbox_closed(self, mbox: Mailbox) -> None:
        """The node's closed-mailbox hook (loop thread): drop every claim of ``mbox``."""
        mbox_id = mbox.id
        if mbox_id.node == self._node.id and self._state.names_of(mbox_id):
            self._apply(self._state.mailbox_closed(mbox_id))

    def _apply(self, effects: Effects) -> None:
        """Carry out what the state decided on a local change: notify, replicate."""
        if effects.notify:
            self._deliver(effects.notify, 0)
        if effects.broadcast and self._peers:
            cluster = self._cluster
            assert cluster is not None
            for payload in change_payloads(effects.broadcast, self._limits):
                for peer in list(self._peers):
                    cluster.send_control(peer, payload)

    def _deliver(self, notify: Iterable[tuple[MailboxID, str]], coalesced: int) -> None:
        local_mailbox = self._node.local_mailbox
        names: set[str] = set()
        count = 0
        for mbox_id, name in notify:
            mbox = local_mailbox(mbox_id)
            if mbox is not None:
                mbox.deliver(MultipleClaim(name))
            names.add(name)
            count += 1
        if count:
            shown = sorted(names)
            self._log.info(
                "names.multiple_claim", names=shown[:10], name_count=len(shown), notified=count,
                coalesced=coalesced,
            )

    def _peer_notices(self, notify: tuple[tuple[MailboxID, str], ...]) -> None:
        """Notices a peer's frame caused: through the throttle (now, or at the interval's end)."""
        loop = asyncio.get_running_loop()
        throttle = self._throttle
        now_pairs = throttle.offer(notify, loop.time())
        if now_pairs:
            self._deliver(now_pairs, self._take_coalesced())
        self._schedule_flush(loop)

    def _take_coalesced(self) -> int:
        coalesced, self._throttle.coalesced = self._throttle.coalesced, 0
        return coalesced

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._throttle.next_due()
        if due is None or self._flush is not None:
            return
        self._flush = loop.call_at(due, self._flush_notices)

    def _flush_notices(self) -> None:
        """Timer (loop): deliver the deferred notices whose interval ended, if still in conflict."""
        self._flush = None
        loop = asyncio.get_running_loop()
        in_conflict = self._state.in_conflict
        pairs = [(m, name) for m, name in self._throttle.due(loop.time()) if in_conflict(name, m)]
        self._deliver(pairs, self._take_coalesced())
        self._schedule_flush(loop)

    # ------------------------------------------------------------------------- peers

    def peer_up(self, peer: int, incarnation: int) -> None:
        """Cluster listener (loop): a new end for the peer's frames; send it our whole snapshot.

        The peer's own snapshot must end within ``registry_snapshot_timeout`` from now.
        """
        cluster = self._cluster
        assert cluster is not None
        old = self._peers.pop(peer, None)
        if old is not None:  # pragma: no cover - the cluster reports the old connection down first
            old.close()
        self._peers[peer] = receiver = PeerRegistry(self._state, peer, incarnation, self._limits)
        payloads = snapshot_payloads(self._state.local_snapshot(), self._limits)
        for payload in payloads:
            cluster.send_control(peer, payload)
        self._cancel_deadline(peer)
        self._deadlines[peer] = asyncio.get_running_loop().call_later(
            self._limits.snapshot_timeout, self._snapshot_overdue, peer, receiver
        )
        self._log.debug("names.snapshot.sent", peer=peer, chunks=len(payloads) - 2)

    def peer_down(self, peer: int) -> None:
        """Cluster listener (loop): forget the peer's claims; it no longer holds up a sync."""
        receiver = self._peers.pop(peer, None)
        if receiver is not None:
            receiver.close()
        else:
            self._state.node_lost(peer)
        self._cancel_deadline(peer)
        for future, waiting in list(self._syncs.values()):
            waiting.discard(peer)
            if not waiting and not future.done():
                future.set_result(None)

    def control(self, peer: int, payload: Any) -> None:
        """Cluster listener (loop): one registry frame from ``peer``.

        Raises :class:`reign.ProtocolError` for anything a correct peer never sends and for a
        frame over a limit (see :mod:`reign._core.registry_wire`); nothing of it is applied.
        """
        receiver = self._peers.get(peer)
        if receiver is None:
            raise ProtocolError(f"registry frame from node {peer} before it came up")
        try:
            got = receiver.receive(payload)
        except ValueError as exc:  # pragma: no cover - registry_wire checks what the state checks
            raise ProtocolError(f"registry frame from node {peer}: {exc}") from None
        if self._name_waiters and got.kind in (CHANGES, CHUNK):
            self._wake_waiters()
        if got.effects.notify:
            self._peer_notices(got.effects.notify)
        if got.answer is not None:
            cluster = self._cluster
            assert cluster is not None
            cluster.send_control(peer, got.answer)
        elif got.synced is not None:
            self._synced(peer, got.synced)
        elif got.kind == END:
            self._cancel_deadline(peer)
            self._log.debug("names.snapshot.merged", peer=peer, claims=got.claims)

    def _synced(self, peer: int, seq: int) -> None:
        entry = self._syncs.get(seq)
        if entry is None:
            return  # that sync already timed out
        future, waiting = entry
        waiting.discard(peer)
        if not waiting and not future.done():
            future.set_result(None)

    def _cancel_deadline(self, peer: int) -> None:
        handle = self._deadlines.pop(peer, None)
        if handle is not None:
            handle.cancel()

    def _snapshot_overdue(self, peer: int, receiver: PeerRegistry) -> None:
        """Timer (loop): the peer's snapshot did not end in time: drop its claims, disconnect."""
        self._deadlines.pop(peer, None)
        if self._peers.get(peer) is not receiver or receiver.phase == "live":
            return  # pragma: no cover - cancelled too late
        del self._peers[peer]
        phase, claims = receiver.phase, receiver.snapshot_claims
        receiver.close()  # the claims go now, whatever the connection does next
        timeout = self._limits.snapshot_timeout
        cluster = self._cluster
        assert cluster is not None
        reason = (
            f"registry snapshot not complete {timeout:g} s after the connection came up "
            f"({claims} claims received; registry_snapshot_timeout)"
        )
        if cluster.disconnect(peer, reason):  # (not when the node is stopping)
            self._log.warning(
                "names.snapshot.timeout", peer=peer, timeout=timeout, phase=phase, claims=claims
            )

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

