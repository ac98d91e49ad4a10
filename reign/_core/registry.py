"""The global name registry as a pure state machine: no asyncio, no I/O, no clock.

Every node runs one :class:`RegistryState` (``local_node`` is its node id). The asyncio layer
feeds it local events (register, unregister, mailbox closed) and what peers replicate (through
:mod:`.registry_wire`, which parses and applies the peers' frames), and carries out the
:class:`Effects` each call returns: send ``MultipleClaim(name)`` to the local claimants in
``Effects.notify`` and send the :class:`ClaimChange` records in ``Effects.broadcast`` to every
connected peer. This module decides nothing else.

Model
-----
A *claim* is ``(name, claimant)``; the node that owns it is ``claimant.node``. A node is the sole
authority for its own claims: it adds and removes them and replicates them to its peers, which
never relay them further. Each state holds the claims of every node it knows about, its own
included. A name may have any number of claimants; :meth:`RegistryState.lookup` picks the
smallest by ``(node, incarnation, serial)``, so nodes with the same view pick the same one.
Names follow one rule everywhere (:func:`check_name`): a non-empty str of at most
:data:`MAX_NAME_BYTES` UTF-8 bytes, local and remote alike.

Invariants (kept after every call returns; ``tests/test_registry_state.py`` checks them)
-----------------------------------------------------------------------------------------
1. The indexes agree: ``name -> claimants`` and ``node -> claimant -> names`` describe the same
   set of claims, and ``name -> local claimants`` its local part; no index keeps an empty entry.
2. ``multiple_claim_count`` equals the number of names with two or more claimants. It is kept
   by counting as claims come and go, never by a scan.
3. Once :meth:`~RegistryState.node_incarnation` has told the state peer P's incarnation, every
   claim held for P is of that incarnation; claims of other incarnations are dropped at once and
   ignored when they arrive later (a late message from a previous run of P).
4. After :meth:`~RegistryState.node_lost` (P) no claim of P is held until P replicates again.
5. *Notification memory.* Every local claimant X of a name N has been sent ``MultipleClaim(N)``
   after learning of each other current claimant Y of N ("X was told about Y"). A call that
   makes N gain claimants X was not told about notifies X exactly once (however many it gained).
   X hears about each claim *episode* of Y once: an episode lasts from the owner adding the claim
   to the owner removing it (an unregister or mailbox close, replicated or local, or a snapshot
   from Y's live node that lacks it), across losses of Y's node in between. So learning the
   same claim again (a peer lost and back with the same claims after a partition heals, or its
   snapshot merged twice) notifies nobody, while Y claiming N again after its owner removed the
   claim is a new conflict. X forgets everything about N when X stops claiming N. Claims of a
   superseded incarnation of a peer end their episodes (they can never come back).
   This is kept without a per-pair memory: each local claim records a *stamp* (a counter value)
   when it is made, and a claim lost with its node records the stamp of the loss if its name had
   local claimants then (``_lost``). A returning claim notifies exactly the local claimants whose
   stamp is later than its loss (they never saw it); any other gained claim notifies every local
   claimant of the name. Memory is O(claims); no call walks the other claimants of a name.
6. Only local claimants are ever in ``Effects.notify``: each node notifies its own claimants,
   so a claimant is never notified twice for one conflict by two nodes.
7. *Memory accounting.* :meth:`~RegistryState.units_of` (node) is the :func:`claim_units` of
   that node's claims held plus, for a peer, of its lost claims remembered for invariant 5;
   a batch given a ``budget`` (:meth:`~RegistryState.apply_changes`,
   :meth:`~RegistryState.snapshot_chunk`) never leaves it above the budget: it raises
   :class:`OverBudget` first, applying nothing. One claim unit stands for
   :data:`CLAIM_UNIT_BYTES` of this node's memory (measured; see :data:`CLAIM_OVERHEAD_BYTES`).

Cost (n: claimants of the name; k: claims of the call; L: local claimants told)
------------------------------------------------------------------------------
``lookup`` and ``seen`` are O(1); an add is O(log n + L), a remove O(log n) amortized (a
lazily pruned min-heap per name with two or more claimants; names with one claimant, the usual
case, keep the claimant itself); ``lookup_all`` is O(n log n); :meth:`node_lost` and a snapshot
are O(claims of that node); a batch (:meth:`apply_changes`, :meth:`snapshot_chunk`) is O(k) of
those. ``tests/test_registry_state.py`` checks that the cost per change does not grow with n.

Contract for the caller (the replication layer, :mod:`.registry_wire`)
---------------------------------------------------------------------
* Local changes: call :meth:`register_local`, :meth:`unregister_local` and
  :meth:`mailbox_closed`, and send the returned ``broadcast`` to every connected peer, in order.
* On each connection to peer P (after its handshake): :meth:`node_incarnation` (P, its
  incarnation); then send our own claims as ``begin``, :meth:`local_snapshot` in chunks,
  ``end``; the peer feeds them to :meth:`begin_snapshot`, :meth:`snapshot_chunk` and
  :meth:`end_snapshot`. A snapshot is applied as its chunks arrive; its end drops what the
  snapshot did not hold. The sender must send every chunk of a snapshot before any change from
  a later call; a peer that interleaves is refused with ``ValueError``.
* Changes from P arrive as :meth:`apply_changes` (or :meth:`remote_add`, :meth:`remote_remove`,
  :meth:`apply_change`) in the order P sent them; only one connection per peer feeds the state
  at a time.
* When the connection to P is lost: :meth:`node_lost` (P). An unfinished snapshot ends with it.

Errors: every call that takes data from a peer raises ``ValueError`` for data no correct peer
sends (a claim on our behalf, a claim not owned by the node sending it, a bad name) and then
changes nothing; the caller treats it as a protocol error and closes that connection. Local
calls raise ``ValueError`` for misuse (a foreign mailbox, a bad name); the caller translates it
into :class:`~reign.CantGloballyRegisterError`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from .ids import MAX_NODE_ID, UINT64_LIMIT, MailboxID

__all__ = [
    "CLAIM_OVERHEAD_BYTES",
    "CLAIM_UNIT_BYTES",
    "MAX_CLAIM_UNITS",
    "MAX_NAME_BYTES",
    "NO_EFFECTS",
    "Change",
    "Claim",
    "ClaimChange",
    "Effects",
    "OverBudget",
    "RegistryState",
    "check_name",
    "claim_units",
    "name_size",
    "order_key",
]

#: Longest name, in UTF-8 bytes, for local and remote claims alike. Erlang's registered names
#: are atoms of at most 255 characters; 512 bytes allows as much for mostly-ASCII text while one
#: claim (name, serial and framing, under 560 bytes) always fits the smallest
#: ``max_message_bytes`` a spec allows (1 KiB).
MAX_NAME_BYTES = 512

#: Bytes one claim costs a node besides its name's UTF-8 bytes, at most (CPython 3.11, 64-bit).
#: ``tests/test_registry_state.py`` measures it with tracemalloc and fails if it is exceeded:
#: 232 B for a claim with its own mailbox and an 8-byte name, 294 B for one of 50,000
#: claimants of one name (the heap and key of a shared name), 695 B with a 512-byte name;
#: 320 covers them with a margin of 8% for dict growth points and other builds.
CLAIM_OVERHEAD_BYTES = 320
#: The memory one unit of a peer's claim budget stands for (:func:`claim_units`): a claim of a
#: name of up to 32 bytes is one unit, so a budget of N claims is at most N * 352 bytes.
CLAIM_UNIT_BYTES = 352

Claim = tuple[str, MailboxID]
"""One claim: ``(name, claimant)``."""

Change = tuple[bool, str, MailboxID]
"""One replicated change for :meth:`RegistryState.apply_changes`: ``(added, name, claimant)``."""

_Record = tuple[bool, str, MailboxID, int]
"""A checked change: ``(added, name, claimant, claim_units(name))``."""


def order_key(mbox_id: MailboxID) -> int:
    """The total order every node uses to pick among claimants, as one int (cheap to compare):
    ``(node, incarnation, serial)`` lexicographically."""
    return (mbox_id.node << 128) | (mbox_id.incarnation << 64) | mbox_id.serial


def name_size(name: str) -> int:
    """UTF-8 bytes of ``name`` (lone surrogates counted as their 3-byte encoding)."""
    return len(name) if name.isascii() else len(name.encode("utf-8", "surrogatepass"))


def claim_units(name: str) -> int:
    """What one claim of ``name`` counts for in a peer's claim budget: its memory (at most
    :data:`CLAIM_OVERHEAD_BYTES` plus the name's bytes) in units of :data:`CLAIM_UNIT_BYTES`,
    rounded up. 1 for names of up to 32 bytes, 3 for the longest (512 bytes)."""
    return (CLAIM_OVERHEAD_BYTES + name_size(name) + CLAIM_UNIT_BYTES - 1) // CLAIM_UNIT_BYTES


#: What the costliest claim (a name of MAX_NAME_BYTES) counts for: 3.
MAX_CLAIM_UNITS = (CLAIM_OVERHEAD_BYTES + MAX_NAME_BYTES + CLAIM_UNIT_BYTES - 1) // CLAIM_UNIT_BYTES


def check_name(name: object) -> str:
    """``name`` if it is a valid name (see :data:`MAX_NAME_BYTES`), else ValueError saying why.

    A valid name is a non-empty ``str`` (not a subclass: the caller converts those) that is
    valid Unicode for UTF-8 (no lone surrogates) and at most :data:`MAX_NAME_BYTES` bytes long.
    """
    _name_units(name)
    return name  # type: ignore[return-value]


def _name_units(name: object) -> int:
    """:func:`claim_units` of ``name``, checking it as :func:`check_name` does (one pass)."""
    if type(name) is not str:
        raise ValueError(f"a name is a str, not {type(name).__name__}")
    if name.isascii():
        if not name:
            raise ValueError("a name cannot be empty")
        size = len(name)
    else:
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(
                f"a name must be encodable as UTF-8 (no lone surrogates): {name[:80]!r}"
            ) from None
    if size > MAX_NAME_BYTES:
        raise ValueError(f"a name is at most {MAX_NAME_BYTES} UTF-8 bytes, this one is {size}")
    return (CLAIM_OVERHEAD_BYTES + size + CLAIM_UNIT_BYTES - 1) // CLAIM_UNIT_BYTES


class OverBudget(ValueError):
    """A batch from a peer would make its claims cost more than the budget the caller gave."""


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
    sorted by name, then claimant, no pair twice. ``broadcast``: changes to our own claims, to
    be sent to every connected peer in this order. Falsy when there is nothing to do.
    """

    notify: tuple[tuple[MailboxID, str], ...] = ()
    broadcast: tuple[ClaimChange, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.notify or self.broadcast)


NO_EFFECTS = Effects()


class _Many:
    """The claimants of a name that has two or more: by order key, plus a min-heap of the keys.

    ``first`` is always the smallest live claimant (kept eagerly, so a query from another
    thread reads one attribute). The heap may hold keys of removed claimants (and a key twice,
    after a remove and an add); it is pruned when its top is removed and rebuilt when more than
    half of it is stale, so every operation is O(log n) amortized.
    """

    __slots__ = ("first", "heap", "members")

    def __init__(self, a: MailboxID, b: MailboxID) -> None:
        ka, kb = order_key(a), order_key(b)
        self.members = {ka: a, kb: b}
        self.heap = [ka, kb] if ka < kb else [kb, ka]
        self.first = a if ka < kb else b

    def add(self, key: int, mbox_id: MailboxID) -> None:
        self.members[key] = mbox_id
        heapq.heappush(self.heap, key)
        if key == self.heap[0]:
            self.first = mbox_id

    def remove(self, key: int) -> None:
        members = self.members
        del members[key]
        heap = self.heap
        if len(heap) > 2 * len(members) + 8:
            heap[:] = members
            heapq.heapify(heap)
        else:
            while heap[0] not in members:
                heapq.heappop(heap)
        self.first = members[heap[0]]

    def sorted(self) -> list[MailboxID]:
        members = self.members
        return [members[key] for key in sorted(members)]


def _check_mbox(mbox_id: object) -> MailboxID:
    if type(mbox_id) is not MailboxID:
        raise ValueError(f"a claimant is a MailboxID, got {type(mbox_id).__name__}")
    return mbox_id


class RegistryState:
    """What one node knows of the cluster's name claims; see the module header for the rules.

    Not thread-safe for mutation and never waits: the caller serialises calls (one event loop).
    :meth:`lookup` and :meth:`seen` may be called from other threads meanwhile (each reads one
    dict entry); :meth:`lookup_all` may then raise RuntimeError (a dict changed size) and is
    retried by the caller.
    """

    __slots__ = (
        "_claimants",
        "_incarnations",
        "_local",
        "_local_node",
        "_lost",
        "_multiple",
        "_owned",
        "_pending",
        "_stamp",
        "_units",
    )

    def __init__(self, local_node: int) -> None:
        if type(local_node) is not int or not 0 <= local_node <= MAX_NODE_ID:
            raise ValueError(f"local_node must be an int in 0..{MAX_NODE_ID}, got {local_node!r}")
        self._local_node = local_node
        # Invariant 1. name -> its sole claimant, or _Many when it has two or more. (Entries are
        # told apart with ``type(x) is MailboxID``, exact and fast; mypy cannot narrow the other
        # branch from it, hence the union-attr ignores below.)
        self._claimants: dict[str, MailboxID | _Many] = {}
        # node -> claimant -> its sole name, or a set of two or more.
        self._owned: dict[int, dict[MailboxID, str | set[str]]] = {}
        # name -> its local claimants and the stamps of their claims: (claimant, stamp) for the
        # usual sole one (a tuple is a third of a dict's memory), a dict of two or more (dict
        # order is stamp order).
        self._local: dict[str, tuple[MailboxID, int] | dict[MailboxID, int]] = {}
        # Invariant 2: names with >= 2 claimants.
        self._multiple = 0
        # Invariant 5: peer node -> lost claim -> stamp of the loss (names with local claimants).
        self._lost: dict[int, dict[Claim, int]] = {}
        self._stamp = 0
        # peer node -> claim_units of its claims held plus those remembered in _lost.
        self._units: dict[int, int] = {}
        # Invariant 3: peer node -> its current incarnation, once known.
        self._incarnations: dict[int, int] = {}
        # Peers whose snapshot is being received.
        self._pending: set[int] = set()

    def __repr__(self) -> str:
        return (
            f"<RegistryState node={self._local_node} names={len(self._claimants)} "
            f"multiple={self._multiple}>"
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
        """The smallest claimant of ``name`` by ``(node, incarnation, serial)``, or None. O(1)."""
        entry = self._claimants.get(name)
        if entry is None or type(entry) is MailboxID:
            return entry
        return entry.first  # type: ignore[union-attr]

    def lookup_all(self, name: str) -> list[MailboxID]:
        """Every claimant of ``name``, smallest first (empty if none)."""
        entry = self._claimants.get(name)
        if entry is None:
            return []
        if type(entry) is MailboxID:
            return [entry]
        return entry.sorted()  # type: ignore[union-attr]

    def seen(self, name: str) -> bool:
        """Whether ``name`` has at least one claimant in this node's view."""
        return name in self._claimants

    def in_conflict(self, name: str, mbox_id: MailboxID) -> bool:
        """Whether the local ``mbox_id`` claims ``name`` and the name has another claimant."""
        local = self._local.get(name)
        if local is None or type(self._claimants[name]) is not _Many:
            return False
        return local[0] == mbox_id if isinstance(local, tuple) else mbox_id in local

    def names_of(self, mbox_id: MailboxID) -> frozenset[str]:
        """The names ``mbox_id`` claims in this node's view."""
        names = self._owned.get(mbox_id.node, {}).get(mbox_id)
        if names is None:
            return frozenset()
        return frozenset((names,)) if type(names) is str else frozenset(names)

    def claims_of(self, node_id: int) -> int:
        """How many claims of ``node_id`` this state holds (O(claimants of that node))."""
        return sum(
            1 if type(names) is str else len(names) for names in self._owned.get(node_id, {}).values()
        )

    def remembered_of(self, node_id: int) -> int:
        """How many lost claims of ``node_id`` are remembered for invariant 5 (O(1))."""
        return len(self._lost.get(node_id, ()))

    def units_of(self, node_id: int) -> int:
        """The memory node ``node_id``'s claims cost this state, in :func:`claim_units` (O(1)):
        its claims held plus (for a peer) its lost claims remembered for invariant 5."""
        return self._units.get(node_id, 0)

    def local_fits(self, name: str, mbox_id: MailboxID, budget: int) -> bool:
        """Whether claiming ``name`` for the local ``mbox_id`` keeps this node's own claims within
        ``budget`` claim units (what a peer accepts from us); True if it is claimed already.
        O(1): the name is measured only when the node is within MAX_CLAIM_UNITS of the budget."""
        units = self._units.get(self._local_node, 0)
        if units + MAX_CLAIM_UNITS <= budget:
            return True
        return self.holds(name, mbox_id) or units + claim_units(name) <= budget

    def units_delta(self, node_id: int, changes: Iterable[Change]) -> int:
        """How :meth:`units_of` (``node_id``) would change if ``changes`` were applied in order:
        exact (what the ``budget`` of :meth:`apply_changes` is checked against). O(len(changes));
        raises ValueError for a bad name."""
        return self._records_delta(node_id, ((a, n, m, _name_units(n)) for a, n, m in changes))

    def incarnation_of(self, node_id: int) -> int | None:
        """The incarnation last given to :meth:`node_incarnation` for ``node_id``, if any."""
        return self._incarnations.get(node_id)

    def snapshot_pending(self, node_id: int) -> bool:
        """Whether a snapshot from ``node_id`` was begun and has not ended."""
        return node_id in self._pending

    def local_snapshot(self) -> list[Claim]:
        """Every claim this node owns, sorted by name then claimant: what peers need on connect."""
        claims = [
            (name, mbox_id)
            for mbox_id, names in self._owned.get(self._local_node, {}).items()
            for name in ((names,) if type(names) is str else names)
        ]
        claims.sort(key=lambda claim: (claim[0], order_key(claim[1])))
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

        Every claimant of ``name`` is notified if it now has two or more (the new one about all
        the others, the others about the new one). Raises ValueError if ``name`` is not a valid
        name (:func:`check_name`) or ``mbox_id`` is not on this node. (Whether the mailbox is
        alive is the caller's business.)
        """
        units = _name_units(name)
        mbox_id = self._check_local(mbox_id)
        if not self._add(name, mbox_id, units):
            return NO_EFFECTS
        change = (ClaimChange("add", name, mbox_id),)
        if type(self._claimants[name]) is MailboxID:  # its sole claimant: nobody to tell
            return Effects(broadcast=change)
        notify: set[tuple[MailboxID, str]] = set()
        self._gained(name, mbox_id, None, notify)
        return Effects(_sorted(notify), change)

    def unregister_local(self, name: str, mbox_id: MailboxID) -> Effects:
        """Remove the local claim ``(name, mbox_id)``; ignored if it is not held.

        Other claimants of ``name`` are untouched. Never raises: anything that is not a local
        claim is simply not a claimant.
        """
        if type(name) is not str or type(mbox_id) is not MailboxID:
            return NO_EFFECTS
        if mbox_id.node != self._local_node or not self._remove(name, mbox_id, claim_units(name)):
            return NO_EFFECTS
        return Effects(broadcast=(ClaimChange("remove", name, mbox_id),))

    def mailbox_closed(self, mbox_id: MailboxID) -> Effects:
        """Remove every claim of the local mailbox ``mbox_id`` (call it when the mailbox closes).

        Raises ValueError if ``mbox_id`` is not on this node.
        """
        mbox_id = self._check_local(mbox_id)
        names = sorted(self.names_of(mbox_id))
        for name in names:
            self._remove(name, mbox_id, claim_units(name))
        return Effects(broadcast=tuple(ClaimChange("remove", name, mbox_id) for name in names))

    # --------------------------------------------------------------------- peers' changes

    def apply_changes(self, node_id: int, changes: Iterable[Change], budget: int | None = None) -> Effects:
        """Apply ``changes`` replicated by their owner ``node_id``, in order, as one call.

        Each change is ``(added, name, claimant)``. Changes of an incarnation other than the
        one :meth:`node_incarnation` set are ignored; a removal of a claim not held is ignored.
        A local claimant is notified at most once per name, however many claimants the name
        gained. Raises ValueError, applying nothing, for a change not owned by ``node_id`` or
        malformed (a bad name: :func:`check_name`), while ``node_id`` is in the middle of
        sending its snapshot, or (:class:`OverBudget`) if the changes would leave
        :meth:`units_of` (``node_id``) above ``budget``.
        """
        self._check_peer(node_id)
        records: list[_Record] = []
        append = records.append
        adds = 0
        for change in changes:
            if (
                type(change) is not tuple
                or len(change) != 3
                or type(change[0]) is not bool
                or type(change[2]) is not MailboxID
                or change[2].node != node_id
            ):
                raise ValueError(f"a change of node {node_id} is (added, name, its MailboxID), got {change!r:.80}")
            added, name, mbox_id = change
            units = _name_units(name)
            if added:
                adds += units
            append((added, name, mbox_id, units))
        known = self._incarnations.get(node_id)
        if node_id in self._pending and any(known is None or r[2].incarnation == known for r in records):
            raise ValueError(f"node {node_id} sent a change in the middle of its snapshot")
        return self._apply_records(node_id, records, budget, adds)

    def remote_add(self, name: str, mbox_id: MailboxID) -> Effects:
        """Apply a claim replicated by its owner ``mbox_id.node`` (:meth:`apply_changes`).

        Raises ValueError if the claim is on this node, the name is invalid, or the owner is in
        the middle of sending its snapshot.
        """
        return self.apply_changes(_check_mbox(mbox_id).node, ((True, name, mbox_id),))

    def remote_remove(self, name: str, mbox_id: MailboxID) -> Effects:
        """Apply the removal of a claim, replicated by its owner ``mbox_id.node``.

        It ends the claim's episode (invariant 5): if it claims ``name`` again, the local
        claimants are notified again. Ignored if the claim is not held or is of a superseded
        incarnation. Raises ValueError as :meth:`remote_add` does.
        """
        return self.apply_changes(_check_mbox(mbox_id).node, ((False, name, mbox_id),))

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
        dropped (ending its episode), an unfinished snapshot from it is discarded, and such
        claims are ignored from now on. Dropping notifies nobody. Raises ValueError for our own
        node id or an out-of-range incarnation.
        """
        self._check_peer(node_id)
        if type(incarnation) is not int or not 0 <= incarnation < UINT64_LIMIT:
            raise ValueError(f"an incarnation is an int in 0..2**64-1, got {incarnation!r}")
        if self._incarnations.get(node_id) == incarnation:
            return NO_EFFECTS
        self._incarnations[node_id] = incarnation
        self._pending.discard(node_id)
        owned = self._owned.get(node_id, {})
        for mbox_id in [m for m in owned if m.incarnation != incarnation]:
            for name in self.names_of(mbox_id):
                self._remove(name, mbox_id, claim_units(name))
        for name, mbox_id in [c for c in self._lost.get(node_id, ()) if c[1].incarnation != incarnation]:
            self._unremember(node_id, name, mbox_id)
        return NO_EFFECTS

    def node_lost(self, node_id: int) -> Effects:
        """Drop every claim owned by ``node_id``; an unfinished snapshot from it ends here.

        The claims' episodes go on (invariant 5), so the same claims coming back (a partition
        that heals) notify nobody. Its incarnation stays known. O(claims of that node).
        Raises ValueError for our own node id.
        """
        self._check_peer(node_id)
        self._pending.discard(node_id)
        self._lose_all(node_id)
        return NO_EFFECTS

    def begin_snapshot(self, node_id: int) -> None:
        """Start receiving the full set of claims ``node_id`` owns.

        Claims of ``node_id`` already held are set aside as :meth:`node_lost` does (their
        episodes go on while the snapshot may bring them back); on a fresh connection there are
        none. Raises ValueError for our own node id.
        """
        self._check_peer(node_id)
        self._lose_all(node_id)
        self._pending.add(node_id)

    def snapshot_chunk(self, node_id: int, claims: Iterable[Claim], budget: int | None = None) -> Effects:
        """Apply ``claims``, part of the snapshot being received from ``node_id``, now.

        Claims of a superseded incarnation are ignored. Local claimants of names that gained
        claimants they were not told about are notified, at most once per name.
        Raises ValueError, adding nothing, if no snapshot from ``node_id`` was begun, if any
        claim is malformed or not owned by ``node_id``, or (:class:`OverBudget`) if the claims
        would leave :meth:`units_of` (``node_id``) above ``budget``.
        """
        self._check_peer(node_id)
        if node_id not in self._pending:
            raise ValueError(f"snapshot chunk from node {node_id} without begin_snapshot")
        records = self._checked_claims(node_id, claims)
        return self._apply_records(node_id, records, budget, sum(r[3] for r in records))

    def end_snapshot(self, node_id: int) -> Effects:
        """The snapshot from ``node_id`` is complete: it is now the whole truth about its claims.

        Claims of ``node_id`` that were set aside (lost, or held when the snapshot began) and
        did not come back in it end their episodes. O(1) besides freeing that memory. Raises
        ValueError if no snapshot from ``node_id`` was begun.
        """
        self._check_peer(node_id)
        if node_id not in self._pending:
            raise ValueError(f"end of snapshot from node {node_id} without begin_snapshot")
        self._pending.discard(node_id)
        lost = self._lost.pop(node_id, None)
        if lost:
            self._charge(node_id, -sum(claim_units(name) for name, _ in lost))
        return NO_EFFECTS

    def merge_snapshot(self, node_id: int, claims: Iterable[Claim]) -> Effects:
        """:meth:`begin_snapshot`, one :meth:`snapshot_chunk`, :meth:`end_snapshot` in one call.

        On ValueError nothing is applied and no snapshot is left unfinished.
        """
        self._check_peer(node_id)
        records = self._checked_claims(node_id, claims)
        self.begin_snapshot(node_id)
        effects = self._apply_records(node_id, records, None, 0)
        self.end_snapshot(node_id)
        return effects

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

    def _checked_claims(self, node_id: int, claims: Iterable[Claim]) -> list[_Record]:
        records: list[_Record] = []
        for claim in claims:
            if type(claim) is not tuple or len(claim) != 2:
                raise ValueError(f"a claim is a (name, MailboxID) pair, got {claim!r:.80}")
            name, mbox_id = claim
            units = _name_units(name)
            if type(mbox_id) is not MailboxID or mbox_id.node != node_id:
                raise ValueError(f"node {node_id} sent a snapshot holding a claim of {mbox_id!r:.80}")
            records.append((True, name, mbox_id, units))
        return records

    def _apply_records(self, node_id: int, records: list[_Record], budget: int | None, adds: int) -> Effects:
        """Apply checked records of ``node_id``'s claims (``adds``: the units of the additions)
        within ``budget`` (else OverBudget, applying nothing)."""
        known = self._incarnations.get(node_id)
        if budget is not None:
            held = self._units.get(node_id, 0)
            if held + adds > budget:  # only then is the exact count worth its cost
                after = held + self._records_delta(node_id, records)
                if after > budget:
                    raise OverBudget(
                        f"node {node_id}'s claims would cost {after} claim units, over the "
                        f"limit of {budget}"
                    )
        notify: set[tuple[MailboxID, str]] = set()
        add, remove, gained, unremember = self._add, self._remove, self._gained, self._unremember
        for added, name, mbox_id, units in records:
            if known is not None and mbox_id.incarnation != known:
                continue
            if added:
                if add(name, mbox_id, units):
                    gained(name, mbox_id, unremember(node_id, name, mbox_id), notify)
            elif not remove(name, mbox_id, units):
                unremember(node_id, name, mbox_id)
        return Effects(notify=_sorted(notify)) if notify else NO_EFFECTS

    def _records_delta(self, node_id: int, records: Iterable[_Record]) -> int:
        holds = self.holds
        lost = self._lost.get(node_id, {})
        known = self._incarnations.get(node_id)
        seen: dict[Claim, bool] = {}
        delta = 0
        for added, name, mbox_id, units in records:
            if known is not None and mbox_id.incarnation != known:
                continue
            claim = (name, mbox_id)
            present = seen.get(claim)
            if present is None:
                present = claim in lost or holds(name, mbox_id)
            if added != present:
                delta += units if added else -units
                seen[claim] = added
        return delta

    def holds(self, name: str, mbox_id: MailboxID) -> bool:
        """Whether ``(name, mbox_id)`` is a claim in this node's view (O(1); any thread)."""
        entry = self._claimants.get(name)
        if entry is None:
            return False
        if type(entry) is MailboxID:
            return entry == mbox_id
        return order_key(mbox_id) in entry.members  # type: ignore[union-attr]

    def _add(self, name: str, mbox_id: MailboxID, units: int) -> bool:
        """Add one claim (of ``claim_units`` ``units``) to every index; False if already held."""
        claimants = self._claimants
        entry = claimants.get(name)
        if entry is None:
            claimants[name] = mbox_id
        elif type(entry) is MailboxID:
            if entry == mbox_id:
                return False
            claimants[name] = _Many(entry, mbox_id)
            self._multiple += 1
        else:
            key = order_key(mbox_id)
            if key in entry.members:  # type: ignore[union-attr]
                return False
            entry.add(key, mbox_id)  # type: ignore[union-attr]
        node = mbox_id.node
        owned = self._owned.get(node)
        if owned is None:
            owned = self._owned[node] = {}
        names = owned.setdefault(mbox_id, name)
        if names is name:
            pass
        elif type(names) is str:
            owned[mbox_id] = {names, name}
        else:
            names.add(name)  # type: ignore[union-attr]
        if node == self._local_node:
            self._stamp += 1
            local = self._local.get(name)
            if local is None:
                self._local[name] = (mbox_id, self._stamp)
            elif isinstance(local, tuple):
                self._local[name] = {local[0]: local[1], mbox_id: self._stamp}
            else:
                local[mbox_id] = self._stamp
        held = self._units
        held[node] = held.get(node, 0) + units  # units >= 1: never 0 here
        return True

    def _remove(self, name: str, mbox_id: MailboxID, units: int) -> bool:
        """Remove one claim (of ``claim_units`` ``units``) from every index; False if not held."""
        claimants = self._claimants
        entry = claimants.get(name)
        if entry is None:
            return False
        if type(entry) is MailboxID:
            if entry != mbox_id:
                return False
            del claimants[name]
        else:
            key = order_key(mbox_id)
            members = entry.members  # type: ignore[union-attr]
            if key not in members:
                return False
            if len(members) == 2:
                del members[key]
                (claimants[name],) = members.values()
                self._multiple -= 1
            else:
                entry.remove(key)  # type: ignore[union-attr]
        node = mbox_id.node
        owned = self._owned[node]
        names = owned[mbox_id]
        if type(names) is str:
            del owned[mbox_id]
            if not owned:
                del self._owned[node]
        else:
            names.remove(name)  # type: ignore[union-attr]
            if len(names) == 1:
                owned[mbox_id] = next(iter(names))
        if node == self._local_node:
            local = self._local[name]
            if isinstance(local, tuple):
                del self._local[name]
            else:
                del local[mbox_id]
                if len(local) == 1:
                    self._local[name] = next(iter(local.items()))
        self._charge(node, -units)
        return True

    def _lose_all(self, node_id: int) -> None:
        """Drop every claim of ``node_id``, remembering those of names with local claimants."""
        owned = self._owned.pop(node_id, None)
        if not owned:
            return
        claimants = self._claimants
        local = self._local
        self._stamp += 1
        stamp = self._stamp
        lost = self._lost.get(node_id)
        forgotten = 0
        for mbox_id, names in owned.items():
            key = order_key(mbox_id)
            for name in (names,) if type(names) is str else names:
                entry = claimants[name]
                if type(entry) is MailboxID:
                    del claimants[name]
                else:
                    members = entry.members  # type: ignore[union-attr]
                    if len(members) == 2:
                        del members[key]
                        (claimants[name],) = members.values()
                        self._multiple -= 1
                    else:
                        entry.remove(key)  # type: ignore[union-attr]
                if name in local:
                    if lost is None:
                        lost = self._lost[node_id] = {}
                    lost[(name, mbox_id)] = stamp
                else:
                    forgotten += claim_units(name)
        self._charge(node_id, -forgotten)

    def _unremember(self, node_id: int, name: str, mbox_id: MailboxID) -> int | None:
        """Forget the lost claim ``(name, mbox_id)`` of ``node_id``; its loss stamp, or None."""
        lost = self._lost.get(node_id)
        if not lost:
            return None
        stamp = lost.pop((name, mbox_id), None)
        if stamp is not None:
            self._charge(node_id, -claim_units(name))
            if not lost:
                del self._lost[node_id]
        return stamp

    def _charge(self, node_id: int, units: int) -> None:
        total = self._units.get(node_id, 0) + units
        if total:
            self._units[node_id] = total
        else:
            self._units.pop(node_id, None)

    def _gained(
        self, name: str, mbox_id: MailboxID, lost_at: int | None, notify: set[tuple[MailboxID, str]]
    ) -> None:
        """``name`` just gained ``mbox_id``: collect the local claimants to notify (invariant 5).

        ``lost_at`` is the stamp of the claim's loss if it is coming back (an episode that goes
        on): then only local claimants whose claim is younger than the loss are told.
        """
        if type(self._claimants[name]) is not _Many:
            return
        local = self._local.get(name)
        if local is None:
            return
        if isinstance(local, tuple):
            if lost_at is None or local[1] > lost_at:
                notify.add((local[0], name))
        elif lost_at is None:  # a new episode (a local claim is always one): everyone hears
            for other in local:
                notify.add((other, name))
        else:
            for other, stamp in reversed(local.items()):  # newest first
                if stamp < lost_at:  # told before the loss, and so is everyone older
                    break
                notify.add((other, name))


def _sorted(notify: set[tuple[MailboxID, str]]) -> tuple[tuple[MailboxID, str], ...]:
    return tuple(sorted(notify, key=lambda pair: (pair[1], order_key(pair[0]))))
