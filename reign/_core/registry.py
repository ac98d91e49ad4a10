"""The global name registry as a pure state machine: no asyncio, no I/O, no clock.

Every node runs one :class:`RegistryState` (``local_node`` is its node id). The asyncio layer
feeds it local events (register, unregister, mailbox closed) and what peers replicate, and
carries out the :class:`Effects` each call returns: send ``MultipleClaim(name)`` to the local
claimants in ``Effects.notify`` and send the :class:`ClaimChange` records in
``Effects.broadcast`` to every connected peer. This module decides nothing else.

Model
-----
A *claim* is ``(name, claimant)``; the node that owns it is ``claimant.node``. A node is the sole
authority for its own claims: it adds and removes them and replicates them to its peers, which
never relay them further. Each state holds the claims of every node it knows about, its own
included. A name may have any number of claimants; :meth:`RegistryState.lookup` picks the
smallest by ``(node, incarnation, serial)``, so nodes with the same view pick the same one.

Invariants (kept after every call returns; ``tests/test_registry_state.py`` checks them)
-----------------------------------------------------------------------------------------
1. The three indexes agree: ``name -> claimants``, ``claimant -> names`` and
   ``node -> claimants`` describe the same set of claims; no index keeps an empty entry.
2. ``multiple_claim_count`` equals the number of names with two or more claimants. It is kept
   by counting as claims come and go, never by a scan.
3. Once :meth:`~RegistryState.node_incarnation` has told the state peer P's incarnation, every
   claim held for P is of that incarnation; claims of other incarnations are dropped at once and
   ignored when they arrive later (a late message from a previous run of P).
4. After :meth:`~RegistryState.node_lost` (P) no claim of P is held until P replicates again.
5. *Notification memory.* For every local claimant X of a name N, ``told[N, X]`` is the set of
   other claimants X has been sent ``MultipleClaim(N)`` about, and after every call it holds
   every *current* other claimant of N. A call that makes N gain claimants X has not been told
   about notifies X exactly once (however many claimants it gained) and adds them to the memory.
   So X hears about each distinct other claimant Y once: learning the same conflict again (a
   snapshot merged twice; a peer lost and back with the same claims after a partition heals)
   notifies nobody. The memory for (N, X) is forgotten when X stops claiming N. Y is forgotten
   from it when Y's *owner* removes the claim (N, Y): an unregister or mailbox close, replicated
   or local, or a snapshot from Y's live node that lacks it; so Y claiming N again is a new
   conflict and X hears of it again. Y is *kept* when its claims go because its node was lost
   (:meth:`~RegistryState.node_lost`): a partition that heals re-notifies nobody. Claimants from
   a superseded incarnation of a peer are pruned from it (they can never come back).
6. Only local claimants are ever in ``Effects.notify``: each node notifies its own claimants,
   so a claimant is never notified twice for one conflict by two nodes.

Contract for the caller (the replication layer)
-----------------------------------------------
* Local changes: call :meth:`register_local`, :meth:`unregister_local` and
  :meth:`mailbox_closed`, and send the returned ``broadcast`` to every connected peer, in order.
* On each connection to peer P (after its handshake): :meth:`node_incarnation` (P, its
  incarnation); then send our own claims as ``begin``, each of :meth:`local_snapshot_chunks`,
  ``end``; the peer feeds them to :meth:`begin_snapshot`, :meth:`snapshot_chunk` and
  :meth:`end_snapshot`. The sender must send every chunk of a snapshot before any
  ``ClaimChange`` from a later call (``local_snapshot_chunks`` takes its copy at once, so later
  changes are not in it); a peer that interleaves is refused with ``ValueError``.
* Changes from P arrive as :meth:`remote_add`, :meth:`remote_remove` (or :meth:`apply_change`)
  in the order P sent them; only one connection per peer feeds the state at a time.
* When the connection to P is lost: :meth:`node_lost` (P). An unfinished snapshot is discarded.

Errors: every call that takes data from a peer raises ``ValueError`` for data no correct peer
sends (a claim on our behalf, a claim not owned by the node sending the snapshot, a bad name);
the caller treats it as a protocol error and closes that connection. Local calls raise
``ValueError`` for misuse (a foreign mailbox, an empty name); the caller translates it into
:class:`~reign.CantGloballyRegisterError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from .ids import MAX_NODE_ID, UINT64_LIMIT, MailboxID

__all__ = ["NO_EFFECTS", "Claim", "ClaimChange", "Effects", "RegistryState"]

Claim = tuple[str, MailboxID]
"""One claim: ``(name, claimant)``."""


def _order(mbox_id: MailboxID) -> tuple[int, int, int]:
    """The total order every node uses to pick among claimants."""
    return (mbox_id.node, mbox_id.incarnation, mbox_id.serial)


def _claim_order(claim: Claim) -> tuple[str, tuple[int, int, int]]:
    return (claim[0], _order(claim[1]))


@dataclass(frozen=True, slots=True)
class ClaimChange:
    """One replicated change to a claim owned by the sending node: ``kind`` is "add" or "remove"."""

    kind: Literal["add", "remove"]
    name: str
    claimant: MailboxID


@dataclass(frozen=True, slots=True)
class Effects:
    """What the caller must do after a mutation.

    ``notify``: ``(local claimant, name)`` pairs, each to be sent ``MultipleClaim(name)`` now;
    sorted by name, then claimant. ``broadcast``: changes to our own claims, to be sent to every
    connected peer in this order. Falsy when there is nothing to do.
    """

    notify: tuple[tuple[MailboxID, str], ...] = ()
    broadcast: tuple[ClaimChange, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.notify or self.broadcast)


NO_EFFECTS = Effects()


def _is_name(name: object) -> bool:
    return isinstance(name, str) and name != ""


def _check_name(name: object) -> str:
    if isinstance(name, str) and name:
        return name
    raise ValueError(f"a name is a non-empty str, got {name!r:.80}")


def _check_mbox(mbox_id: object) -> MailboxID:
    if not isinstance(mbox_id, MailboxID):
        raise ValueError(f"a claimant is a MailboxID, got {type(mbox_id).__name__}")
    return mbox_id


class RegistryState:
    """What one node knows of the cluster's name claims; see the module header for the rules.

    Not thread-safe and never waits: the caller serialises calls (one event loop).
    """

    __slots__ = (
        "_by_node",
        "_claimants",
        "_incarnations",
        "_local_node",
        "_multiple",
        "_names_of",
        "_pending",
        "_told",
    )

    def __init__(self, local_node: int) -> None:
        if type(local_node) is not int or not 0 <= local_node <= MAX_NODE_ID:
            raise ValueError(f"local_node must be an int in 0..{MAX_NODE_ID}, got {local_node!r}")
        self._local_node = local_node
        # Invariant 1: three views of one set of claims.
        self._claimants: dict[str, set[MailboxID]] = {}
        self._names_of: dict[MailboxID, set[str]] = {}
        self._by_node: dict[int, set[MailboxID]] = {}
        # Invariant 2: names with >= 2 claimants.
        self._multiple = 0
        # Invariant 5: (name, local claimant) -> other claimants it was notified about.
        self._told: dict[tuple[str, MailboxID], set[MailboxID]] = {}
        # Invariant 3: peer node -> its current incarnation, once known.
        self._incarnations: dict[int, int] = {}
        # Snapshots being received: peer node -> claims received so far.
        self._pending: dict[int, set[Claim]] = {}

    def __repr__(self) -> str:
        return (
            f"<RegistryState node={self._local_node} names={len(self._claimants)} "
            f"claimants={len(self._names_of)} multiple={self._multiple}>"
        )

    # ----------------------------------------------------------------------------- queries

    @property
    def local_node(self) -> int:
        return self._local_node

    @property
    def multiple_claim_count(self) -> int:
        """Number of names with two or more claimants (O(1))."""
        return self._multiple

    def lookup(self, name: str) -> MailboxID | None:
        """The smallest claimant of ``name`` by ``(node, incarnation, serial)``, or None."""
        claimants = self._claimants.get(name)
        return min(claimants, key=_order) if claimants else None

    def lookup_all(self, name: str) -> list[MailboxID]:
        """Every claimant of ``name``, smallest first (empty if none)."""
        return sorted(self._claimants.get(name, ()), key=_order)

    def seen(self, name: str) -> bool:
        """Whether ``name`` has at least one claimant in this node's view."""
        return name in self._claimants

    def names_of(self, mbox_id: MailboxID) -> frozenset[str]:
        """The names ``mbox_id`` claims in this node's view."""
        return frozenset(self._names_of.get(mbox_id, ()))

    def incarnation_of(self, node_id: int) -> int | None:
        """The incarnation last given to :meth:`node_incarnation` for ``node_id``, if any."""
        return self._incarnations.get(node_id)

    def local_snapshot(self) -> list[Claim]:
        """Every claim this node owns, sorted by name then claimant: what peers need on connect."""
        claims = [
            (name, mbox_id)
            for mbox_id in self._by_node.get(self._local_node, ())
            for name in self._names_of[mbox_id]
        ]
        claims.sort(key=_claim_order)
        return claims

    def local_snapshot_chunks(self, max_items: int) -> Iterator[list[Claim]]:
        """:meth:`local_snapshot` cut into lists of at most ``max_items`` claims.

        The copy is taken when this is called, not while iterating, so it is one point in time.
        Yields nothing when this node owns no claim (send just ``begin`` and ``end``).
        Raises ValueError if ``max_items`` < 1.
        """
        if type(max_items) is not int or max_items < 1:
            raise ValueError(f"max_items must be a positive int, got {max_items!r}")
        claims = self.local_snapshot()
        return iter([claims[i : i + max_items] for i in range(0, len(claims), max_items)])

    # ------------------------------------------------------------------------ local changes

    def register_local(self, name: str, mbox_id: MailboxID) -> Effects:
        """Add the local claim ``(name, mbox_id)``; a no-op if it is already held.

        Raises ValueError if ``name`` is not a non-empty str or ``mbox_id`` is not on this node.
        (Whether the mailbox is alive is the caller's business.)
        """
        name = _check_name(name)
        mbox_id = self._check_local(mbox_id)
        if not self._add(name, mbox_id):
            return NO_EFFECTS
        return Effects(self._notifications((name,)), (ClaimChange("add", name, mbox_id),))

    def unregister_local(self, name: str, mbox_id: MailboxID) -> Effects:
        """Remove the local claim ``(name, mbox_id)``; ignored if it is not held.

        Other claimants of ``name`` are untouched. Never raises: anything that is not a local
        claim is simply not a claimant.
        """
        if not (_is_name(name) and isinstance(mbox_id, MailboxID)):
            return NO_EFFECTS
        if mbox_id.node != self._local_node or not self._remove_by_owner(name, mbox_id):
            return NO_EFFECTS
        return Effects(broadcast=(ClaimChange("remove", name, mbox_id),))

    def mailbox_closed(self, mbox_id: MailboxID) -> Effects:
        """Remove every claim of the local mailbox ``mbox_id`` (call it when the mailbox closes).

        Raises ValueError if ``mbox_id`` is not on this node.
        """
        mbox_id = self._check_local(mbox_id)
        names = sorted(self._names_of.get(mbox_id, ()))
        for name in names:
            self._remove_by_owner(name, mbox_id)
        return Effects(broadcast=tuple(ClaimChange("remove", name, mbox_id) for name in names))

    # --------------------------------------------------------------------- peers' changes

    def remote_add(self, name: str, mbox_id: MailboxID) -> Effects:
        """Apply a claim replicated by its owner ``mbox_id.node``.

        Ignored if it is of an incarnation other than the one :meth:`node_incarnation` set.
        Raises ValueError if the claim is on this node, the name is not a non-empty str, or the
        owner is in the middle of sending its snapshot.
        """
        if not self._accept_remote(name, mbox_id):
            return NO_EFFECTS
        if not self._add(name, mbox_id):
            return NO_EFFECTS
        return Effects(notify=self._notifications((name,)))

    def remote_remove(self, name: str, mbox_id: MailboxID) -> Effects:
        """Apply the removal of a claim, replicated by its owner ``mbox_id.node``.

        The other local claimants of ``name`` forget they were told about ``mbox_id`` (invariant
        5), so if it claims ``name`` again they are notified again. Ignored if the claim is not
        held or is of a superseded incarnation. Raises ValueError as :meth:`remote_add` does.
        """
        if self._accept_remote(name, mbox_id):
            self._remove_by_owner(name, mbox_id)
        return NO_EFFECTS

    def apply_change(self, change: ClaimChange) -> Effects:
        """:meth:`remote_add` or :meth:`remote_remove`, as ``change.kind`` says."""
        if not isinstance(change, ClaimChange):
            raise ValueError(f"expected a ClaimChange, got {type(change).__name__}")
        if change.kind == "add":
            return self.remote_add(change.name, change.claimant)
        if change.kind == "remove":
            return self.remote_remove(change.name, change.claimant)
        raise ValueError(f"unknown ClaimChange kind {change.kind!r:.40}")

    def node_incarnation(self, node_id: int, incarnation: int) -> Effects:
        """Record the current incarnation of peer ``node_id`` (call it on every handshake).

        If it differs from the one known, every claim of another incarnation of that node is
        dropped (and forgotten in the notification memory), an unfinished snapshot from it is
        discarded, and such claims are ignored from now on. Dropping notifies nobody.
        Raises ValueError for our own node id or an out-of-range incarnation.
        """
        self._check_peer(node_id)
        if type(incarnation) is not int or not 0 <= incarnation < UINT64_LIMIT:
            raise ValueError(f"an incarnation is an int in 0..2**64-1, got {incarnation!r}")
        if self._incarnations.get(node_id) == incarnation:
            return NO_EFFECTS
        self._incarnations[node_id] = incarnation
        self._pending.pop(node_id, None)
        for mbox_id in [m for m in self._by_node.get(node_id, ()) if m.incarnation != incarnation]:
            self._drop_claimant(mbox_id)
        for others in self._told.values():
            stale = [m for m in others if m.node == node_id and m.incarnation != incarnation]
            others.difference_update(stale)
        return NO_EFFECTS

    def node_lost(self, node_id: int) -> Effects:
        """Drop every claim owned by ``node_id`` and any unfinished snapshot from it.

        The notification memory is kept, so the same claims coming back (a partition that heals)
        notify nobody. Its incarnation stays known. Raises ValueError for our own node id.
        """
        self._check_peer(node_id)
        self._pending.pop(node_id, None)
        for mbox_id in list(self._by_node.get(node_id, ())):
            self._drop_claimant(mbox_id)
        return NO_EFFECTS

    def begin_snapshot(self, node_id: int) -> None:
        """Start receiving the full set of claims ``node_id`` owns; discards an unfinished one.

        Raises ValueError for our own node id.
        """
        self._check_peer(node_id)
        self._pending[node_id] = set()

    def snapshot_chunk(self, node_id: int, claims: Iterable[Claim]) -> None:
        """Add ``claims`` to the snapshot being received from ``node_id``; applied at the end.

        Raises ValueError (adding nothing) if no snapshot from ``node_id`` was begun, or if any
        claim is malformed or not owned by ``node_id``.
        """
        self._check_peer(node_id)
        pending = self._pending.get(node_id)
        if pending is None:
            raise ValueError(f"snapshot chunk from node {node_id} without begin_snapshot")
        chunk: list[Claim] = []
        for claim in claims:
            try:
                name, mbox_id = claim
            except (TypeError, ValueError):
                raise ValueError(f"a claim is a (name, MailboxID) pair, got {claim!r:.80}") from None
            name = _check_name(name)
            mbox_id = _check_mbox(mbox_id)
            if mbox_id.node != node_id:
                raise ValueError(f"node {node_id} sent a snapshot holding a claim of {mbox_id}")
            chunk.append((name, mbox_id))
        pending.update(chunk)

    def end_snapshot(self, node_id: int) -> Effects:
        """Make the received snapshot the whole truth about ``node_id``'s claims.

        Claims of ``node_id`` held but absent from it are dropped (the owner says they are gone,
        so they are forgotten in the notification memory as a replicated removal is);
        claims of a superseded incarnation in it are ignored; new ones are added, and local
        claimants of names that gained claimants they were not told about are notified, once
        each. Raises ValueError if no snapshot from ``node_id`` was begun.
        """
        self._check_peer(node_id)
        pending = self._pending.pop(node_id, None)
        if pending is None:
            raise ValueError(f"end of snapshot from node {node_id} without begin_snapshot")
        incarnation = self._incarnations.get(node_id)
        if incarnation is not None:
            pending = {claim for claim in pending if claim[1].incarnation == incarnation}
        held = {
            (name, mbox_id) for mbox_id in self._by_node.get(node_id, ()) for name in self._names_of[mbox_id]
        }
        for name, mbox_id in held - pending:
            self._remove_by_owner(name, mbox_id)
        gained = {name for name, mbox_id in pending - held if self._add(name, mbox_id)}
        return Effects(notify=self._notifications(gained))

    def merge_snapshot(self, node_id: int, claims: Iterable[Claim]) -> Effects:
        """:meth:`begin_snapshot`, one :meth:`snapshot_chunk`, :meth:`end_snapshot` in one call.

        On ValueError nothing is applied and no snapshot is left unfinished.
        """
        self.begin_snapshot(node_id)
        try:
            self.snapshot_chunk(node_id, claims)
        except BaseException:
            self._pending.pop(node_id, None)
            raise
        return self.end_snapshot(node_id)

    # ------------------------------------------------------------------------------ private

    def _check_local(self, mbox_id: object) -> MailboxID:
        mbox_id = _check_mbox(mbox_id)
        if mbox_id.node != self._local_node:
            raise ValueError(f"{mbox_id} is not a mailbox of node {self._local_node}")
        return mbox_id

    def _check_peer(self, node_id: object) -> None:
        if type(node_id) is not int or not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"a node id is an int in 0..{MAX_NODE_ID}, got {node_id!r:.40}")
        if node_id == self._local_node:
            raise ValueError(f"node {node_id} is this node, not a peer")

    def _accept_remote(self, name: object, mbox_id: object) -> bool:
        """Validate a replicated change; False if it is of a superseded incarnation."""
        _check_name(name)
        mbox_id = _check_mbox(mbox_id)
        self._check_peer(mbox_id.node)
        known = self._incarnations.get(mbox_id.node)
        if known is not None and mbox_id.incarnation != known:
            return False
        if mbox_id.node in self._pending:
            raise ValueError(f"node {mbox_id.node} sent a change in the middle of its snapshot")
        return True

    def _add(self, name: str, mbox_id: MailboxID) -> bool:
        """Add one claim to every index; False if it was already held."""
        claimants = self._claimants.setdefault(name, set())
        if mbox_id in claimants:
            return False
        claimants.add(mbox_id)
        if len(claimants) == 2:
            self._multiple += 1
        names = self._names_of.get(mbox_id)
        if names is None:
            names = self._names_of[mbox_id] = set()
            self._by_node.setdefault(mbox_id.node, set()).add(mbox_id)
        names.add(name)
        return True

    def _remove(self, name: str, mbox_id: MailboxID) -> bool:
        """Remove one claim from every index (and its notification memory); False if not held."""
        claimants = self._claimants.get(name)
        if claimants is None or mbox_id not in claimants:
            return False
        claimants.remove(mbox_id)
        if len(claimants) == 1:
            self._multiple -= 1
        elif not claimants:
            del self._claimants[name]
        names = self._names_of[mbox_id]
        names.remove(name)
        if not names:
            del self._names_of[mbox_id]
            node_mboxes = self._by_node[mbox_id.node]
            node_mboxes.remove(mbox_id)
            if not node_mboxes:
                del self._by_node[mbox_id.node]
        self._told.pop((name, mbox_id), None)
        return True

    def _remove_by_owner(self, name: str, mbox_id: MailboxID) -> bool:
        """:meth:`_remove` because the claim's owner removed it: the other local claimants of
        ``name`` forget they were told about ``mbox_id`` (invariant 5). False if not held."""
        if not self._remove(name, mbox_id):
            return False
        for other in self._claimants.get(name, ()):
            if other.node != self._local_node:
                continue
            told = self._told.get((name, other))
            if told is not None:
                told.discard(mbox_id)
                if not told:
                    del self._told[(name, other)]
        return True

    def _drop_claimant(self, mbox_id: MailboxID) -> None:
        for name in list(self._names_of.get(mbox_id, ())):
            self._remove(name, mbox_id)

    def _notifications(self, names: Iterable[str]) -> tuple[tuple[MailboxID, str], ...]:
        """Notify each local claimant of ``names`` once about claimants it was not told about.

        Restores invariant 5 for those names; every other name already satisfies it.
        """
        notify: list[tuple[MailboxID, str]] = []
        for name in sorted(set(names)):
            claimants = self._claimants.get(name)
            if claimants is None or len(claimants) < 2:
                continue
            local = sorted((m for m in claimants if m.node == self._local_node), key=_order)
            for mbox_id in local:
                told = self._told.get((name, mbox_id))
                new = claimants - {mbox_id}
                if told is not None:
                    new -= told
                if not new:
                    continue
                if told is None:
                    self._told[(name, mbox_id)] = new
                else:
                    told |= new
                notify.append((mbox_id, name))
        return tuple(notify)
