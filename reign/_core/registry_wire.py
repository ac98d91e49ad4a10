"""The registry's frames: building, checking and applying the CONTROL payloads peers exchange.

Sans-IO, like the rest of :mod:`reign._core`: values in, values out. The asyncio half
(``reign._runtime.names``) sends what :func:`snapshot_payloads` and :func:`change_payloads`
build, hands every payload a peer sends to that peer's :class:`PeerRegistry`, and carries out
the :class:`Received` it returns; it also keeps the clock (:class:`NoticeThrottle` is given the
time, the snapshot deadline is a timer there). The model test in
``tests/test_registry_state.py`` drives these same functions, through the codec.

Registry protocol, version 1 (CONTROL frame payloads, CBOR lists; first item is the kind)
----------------------------------------------------------------------------------------
A node only ever sends its *own* claims, so a claimant travels as its serial alone: the owner
is the sending node, at the incarnation its HELLO announced on this connection.

=====================================  ==========================================================
``["reg.begin"]``                       a snapshot of all the sender's claims follows
``["reg.chunk", [name, serial, ...]]``  part of it, flat pairs; applied on arrival
``["reg.end"]``                         the snapshot is complete: it replaces what was known
``["reg.changes", [op, name, serial,   claims added (op ``"+"``) or removed (``"-"``) since,
...]]``                                 in order
``["reg.sync", seq]``                   answer when everything before this frame is applied
``["reg.synced", seq]``                 that answer
=====================================  ==========================================================

Order on one connection: the first registry frame (``reg.sync``/``reg.synced`` aside) is
``reg.begin``; then ``reg.chunk`` frames and one ``reg.end``; then only ``reg.changes``. One
snapshot per connection: the sender sends it when the connection comes up, and every change
after it. Names obey the local rules (:func:`~.registry.check_name`: non-empty, valid UTF-8, at
most :data:`~.registry.MAX_NAME_BYTES` bytes); serials are ints in 0..2**64-1; ``seq`` is an
int >= 0.

Limits the receiver enforces (:class:`RegistryLimits`; each is a spec field)
---------------------------------------------------------------------------
=============================  ========  ======================================================
spec field                     default   beyond it
=============================  ========  ======================================================
``registry_frame_claims``      5,000     refused: a ``reg.chunk``/``reg.changes`` frame with
                                         more records is a protocol error (senders cut frames
                                         at this size, so a correct peer never sends more)
``registry_peer_claims``       190,000   refused: a frame that would make one peer's claims
                                         (counted in :func:`~.registry.claim_units`, 352 B
                                         each, so ~64 MiB) exceed it is a protocol error,
                                         applied not at all. It bounds an unfinished snapshot
                                         too (its claims are the peer's claims, applied as
                                         they arrive), and the lost claims remembered for a
                                         peer. A node refuses local registrations beyond it,
                                         so a correct peer never sends more.
``registry_snapshot_timeout``  30 s      refused: a peer whose snapshot has not ended this
                                         long after its connection came up has its claims
                                         dropped (memory released) and its connection closed
``registry_notice_interval``   1 s       coalesced, never refused: a local claimant receives
                                         at most one peer-caused ``MultipleClaim`` per name per
                                         interval; conflicts arising meanwhile are reported by
                                         one notice at the interval's end, if the name still
                                         has several claimants then (:class:`NoticeThrottle`)
=============================  ========  ======================================================

Anything else a correct peer never sends (an unknown kind, a wrong shape, a bad name or serial,
a frame out of order) is refused the same way. "Refused" means :class:`~reign.ProtocolError`:
nothing of the frame is applied, the caller closes that connection (logged with the reason),
the state forgets the peer's claims (``node_lost``: O(its claims), ~50 ms for 190,000) and the
peer redials and resends its snapshot. The cost of a frame is bounded by ``registry_frame_claims``: at the default, the
worst frame (5,000 claims of 512-byte names, or 5,000 more claimants of one name) costs about
:data:`FRAME_BUDGET` of loop time on this project's machine kind (``bench/registry_hostile.py``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .._errors import ProtocolError
from .ids import UINT64_LIMIT, MailboxID, mailbox_id_from_parts
from .registry import NO_EFFECTS, Change, Claim, ClaimChange, Effects, OverBudget, RegistryState, name_size

__all__ = [
    "BEGIN",
    "CHANGES",
    "CHUNK",
    "CHUNK_BYTES",
    "DEFAULT_FRAME_CLAIMS",
    "DEFAULT_NOTICE_INTERVAL",
    "DEFAULT_PEER_CLAIMS",
    "DEFAULT_SNAPSHOT_TIMEOUT",
    "END",
    "FRAME_BUDGET",
    "SYNC",
    "SYNCED",
    "NoticeThrottle",
    "PeerRegistry",
    "Received",
    "RegistryLimits",
    "change_payloads",
    "snapshot_payloads",
    "sync_payload",
]

BEGIN = "reg.begin"
CHUNK = "reg.chunk"
END = "reg.end"
CHANGES = "reg.changes"
SYNC = "reg.sync"
SYNCED = "reg.synced"
_ADD = "+"
_REMOVE = "-"

#: Loop time one registry frame may cost, the design target the per-frame limit is chosen for:
#: well under the 250 ms between ticks at the smallest net_ticktime (1 s), so no frame delays
#: a tick, and small enough that a stream of frames leaves the loop responsive.
FRAME_BUDGET = 0.025
#: Records per ``reg.chunk``/``reg.changes`` frame by default. Measured on this project's 2-core
#: VM (``bench/registry_hostile.py``), a frame at the limit costs its receiver ~12 ms (about
#: 2.4 us per claim: check, build the MailboxID, apply), 15 ms for 5,000 more claimants of a name
#: that has 25,000, 17 ms for 5,000 names of 512 bytes (2.6 MB: 9 ms of it decoding): within
#: FRAME_BUDGET. (A garbage collection or a resize of the registry's dicts landing in a frame
#: adds up to ~50 ms; that cost grows with the whole registry, not with the frame.) 5,000
#: claims of short names (~100 KiB) also amortise the framing.
DEFAULT_FRAME_CLAIMS = 5000
#: Claims one peer may hold on this node by default, in claim_units (one per claim of a name of
#: up to 32 bytes): 190,000 * CLAIM_UNIT_BYTES (352 B) = 63.8 MiB, the ~64 MiB per peer the
#: hardening issue asks for. (Before this bound, 400,000 claims cost 294 MiB.)
DEFAULT_PEER_CLAIMS = 190_000
#: Seconds from a connection coming up to the end of the peer's snapshot, by default. A correct
#: peer sends it at once: 100,000 claims arrive in ~0.5 s on loopback, and a full
#: DEFAULT_PEER_CLAIMS snapshot (~4 MB) would take 30 s only below ~1 Mbit/s.
DEFAULT_SNAPSHOT_TIMEOUT = 30.0
#: Least seconds between two peer-caused MultipleClaim notices to one claimant about one name,
#: by default. One second is invisible to an application that reacts to a notice by reading
#: ``lookup_all``, and makes a peer flapping a name cost each claimant one notice a second.
DEFAULT_NOTICE_INTERVAL = 1.0
#: Upper bound of one frame's encoded claims, in bytes (further capped by the spec's
#: ``max_message_bytes``): large enough to amortise framing, small enough to interleave.
CHUNK_BYTES = 256 * 1024
#: Bytes of a record's encoding besides its name's UTF-8 bytes, at most: a text-string header
#: (<= 9), a serial (<= 9), an op (2).
_RECORD_OVERHEAD = 20
#: Bytes reserved for the envelope around a list of records (kind and array headers).
_ENVELOPE_BYTES = 64


@dataclass(frozen=True, slots=True)
class RegistryLimits:
    """The receiver-side bounds of the table above, plus the sender's byte cut.

    ``max_frame_bytes``: the largest payload to build (the spec's ``max_message_bytes``; frames
    are also cut at :data:`CHUNK_BYTES`). Raises ValueError for values out of range (the spec
    validates the same ranges with field names first).
    """

    frame_claims: int = DEFAULT_FRAME_CLAIMS
    peer_claims: int = DEFAULT_PEER_CLAIMS
    snapshot_timeout: float = DEFAULT_SNAPSHOT_TIMEOUT
    notice_interval: float = DEFAULT_NOTICE_INTERVAL
    max_frame_bytes: int = field(default=16 * 1024 * 1024)

    def __post_init__(self) -> None:
        for name, least in (("frame_claims", 1), ("peer_claims", 0), ("max_frame_bytes", 1024)):
            value = getattr(self, name)
            if type(value) is not int or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        for name, low in (("snapshot_timeout", 0.001), ("notice_interval", 0.0)):
            value = getattr(self, name)
            if type(value) not in (int, float) or not low <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= {low:g}, got {value!r}")


# ------------------------------------------------------------------------------- building


def sync_payload(seq: int) -> list[Any]:
    """``["reg.sync", seq]``."""
    return [SYNC, seq]


def snapshot_payloads(claims: Sequence[Claim], limits: RegistryLimits) -> list[list[Any]]:
    """Our snapshot (``claims``: :meth:`~.registry.RegistryState.local_snapshot`) as payloads:
    ``reg.begin``, ``reg.chunk`` frames that each fit ``limits``, ``reg.end``."""
    flat: list[Any] = []
    for name, mbox_id in claims:
        flat += (name, mbox_id.serial)
    return [[BEGIN], *_framed(CHUNK, flat, 2, limits), [END]]


def change_payloads(changes: Iterable[ClaimChange], limits: RegistryLimits) -> list[list[Any]]:
    """``changes`` to our own claims as ``reg.changes`` payloads that each fit ``limits``."""
    flat: list[Any] = []
    for change in changes:
        flat += (_ADD if change.kind == "add" else _REMOVE, change.name, change.claimant.serial)
    return list(_framed(CHANGES, flat, 3, limits))


def _framed(kind: str, flat: list[Any], stride: int, limits: RegistryLimits) -> Iterator[list[Any]]:
    """Cut ``flat`` (records of ``stride`` items, the name second to last) into payloads
    ``[kind, part]`` of at most ``limits.frame_claims`` records that each fit one frame."""
    budget = min(CHUNK_BYTES, limits.max_frame_bytes) - _ENVELOPE_BYTES
    most = limits.frame_claims
    start = size = count = 0
    for end in range(0, len(flat), stride):
        record_size = name_size(flat[end + stride - 2]) + _RECORD_OVERHEAD
        if count and (size + record_size > budget or count >= most):
            yield [kind, flat[start:end]]
            start, size, count = end, 0, 0
        size += record_size
        count += 1
    if count:
        yield [kind, flat[start:]]


# ------------------------------------------------------------------------------- receiving


class Received(NamedTuple):
    """What applying one frame asks of the caller (a NamedTuple: one is made per frame).

    ``kind``: the frame's kind. ``effects``: local claimants to send ``MultipleClaim`` (they
    were caused by the peer: pass them through the :class:`NoticeThrottle`). ``answer``: a
    payload to send back to the peer (the ``reg.synced`` for a ``reg.sync``). ``synced``: the
    ``seq`` of the peer's ``reg.synced``. ``claims``: records in the frame.
    """

    kind: str
    effects: Effects = NO_EFFECTS
    answer: list[Any] | None = None
    synced: int | None = None
    claims: int = 0


class PeerRegistry:
    """The registry's side of one connection to one peer: checks and applies its frames.

    Created when the connection comes up (it tells ``state`` the peer's incarnation);
    :meth:`close` when it goes down. ``phase`` is ``"connected"`` until the peer's
    ``reg.begin``, ``"snapshot"`` until its ``reg.end``, then ``"live"``; ``closed`` after
    :meth:`close`. Every refusal is a :class:`~reign.ProtocolError` naming the frame, the peer
    and the reason, raised before anything of that frame is applied.
    """

    __slots__ = ("_incarnation", "_limits", "_peer", "_state", "phase", "snapshot_claims")

    def __init__(self, state: RegistryState, peer: int, incarnation: int, limits: RegistryLimits) -> None:
        state.node_incarnation(peer, incarnation)
        self._state = state
        self._peer = peer
        self._incarnation = incarnation
        self._limits = limits
        self.phase = "connected"
        #: Claims received in this connection's snapshot so far.
        self.snapshot_claims = 0

    def __repr__(self) -> str:
        return f"<PeerRegistry peer={self._peer} phase={self.phase}>"

    @property
    def peer(self) -> int:
        return self._peer

    def close(self) -> Effects:
        """The connection is gone (or is being closed): the state forgets the peer's claims.

        Idempotent; after it :meth:`receive` raises ProtocolError.
        """
        if self.phase == "closed":
            return NO_EFFECTS
        self.phase = "closed"
        return self._state.node_lost(self._peer)

    def receive(self, payload: Any) -> Received:
        """Check one decoded CONTROL payload from the peer and apply it to the state.

        Raises :class:`~reign.ProtocolError` for anything the table in the module header does
        not allow, and for a frame over a limit; nothing of that frame is applied then.
        """
        if type(payload) is not list or not payload or type(payload[0]) is not str:
            raise ProtocolError(f"registry frame from node {self._peer} is not a [kind, ...] list")
        kind = payload[0]
        if kind == CHANGES:
            return self._changes(payload)
        if kind == CHUNK:
            return self._chunk(payload)
        if kind == SYNC:
            self._expect_len(payload, 2)
            return Received(kind, answer=[SYNCED, self._seq(payload)])
        if kind == SYNCED:
            self._expect_len(payload, 2)
            return Received(kind, synced=self._seq(payload))
        if kind == BEGIN:
            self._expect_len(payload, 1)
            if self.phase != "connected":
                raise self._error(kind, "a second snapshot on one connection" if self.phase == "live"
                                  else "sent in the middle of a snapshot" if self.phase == "snapshot"
                                  else "after the connection closed")
            self._state.begin_snapshot(self._peer)
            self.phase = "snapshot"
            return Received(kind)
        if kind == END:
            self._expect_len(payload, 1)
            self._expect_phase(kind, "snapshot")
            effects = self._state.end_snapshot(self._peer)
            self.phase = "live"
            return Received(kind, effects, claims=self.snapshot_claims)
        raise ProtocolError(f"unknown registry frame {kind!r:.40} from node {self._peer}")

    # ----------------------------------------------------------------------------- private

    def _changes(self, payload: list[Any]) -> Received:
        if self.phase != "live":
            self._expect_phase(CHANGES, "live")
        flat = self._records(payload, 3)
        changes: list[Change] = []
        append = changes.append
        cache: dict[int, MailboxID] = {}  # one MailboxID per serial in a frame
        for i in range(0, len(flat), 3):
            op, serial = flat[i], flat[i + 2]
            if op == _ADD:
                added = True
            elif op == _REMOVE:
                added = False
            else:
                raise self._error(CHANGES, f"unknown change {op!r:.20}")
            mbox_id = cache.get(serial) if type(serial) is int else None
            if mbox_id is None:
                mbox_id = cache[serial] = self._claimant(serial)
            append((added, flat[i + 1], mbox_id))
        try:  # the state checks the names (and everything else) before applying any
            effects = self._state.apply_changes(self._peer, changes, self._limits.peer_claims)
        except ValueError as exc:
            raise self._refused(CHANGES, exc) from None
        return Received(CHANGES, effects, claims=len(changes))

    def _chunk(self, payload: list[Any]) -> Received:
        if self.phase != "snapshot":
            self._expect_phase(CHUNK, "snapshot")
        flat = self._records(payload, 2)
        claims: list[Claim] = []
        append = claims.append
        cache: dict[int, MailboxID] = {}  # one MailboxID per serial in a frame
        for i in range(0, len(flat), 2):
            serial = flat[i + 1]
            mbox_id = cache.get(serial) if type(serial) is int else None
            if mbox_id is None:
                mbox_id = cache[serial] = self._claimant(serial)
            append((flat[i], mbox_id))
        try:
            effects = self._state.snapshot_chunk(self._peer, claims, self._limits.peer_claims)
        except ValueError as exc:
            raise self._refused(CHUNK, exc) from None
        self.snapshot_claims += len(claims)
        return Received(CHUNK, effects, claims=len(claims))

    def _refused(self, kind: str, exc: ValueError) -> ProtocolError:
        if isinstance(exc, OverBudget):
            return self._error(kind, f"{exc} (registry_peer_claims)")
        return self._error(kind, str(exc))

    def _claimant(self, serial: Any) -> MailboxID:
        """The MailboxID of ``serial`` in the peer's current run; ProtocolError for a bad serial.

        The callers keep one object per serial for the frame (a frame's claims mostly share few
        mailboxes), which halves the time a large snapshot spends allocating and collecting.
        """
        if type(serial) is int and 0 <= serial < UINT64_LIMIT:  # (not a bool, not a float)
            return mailbox_id_from_parts(self._peer, self._incarnation, serial)
        raise ProtocolError(f"registry frame from node {self._peer}: bad serial {serial!r:.30}")

    def _records(self, payload: list[Any], stride: int) -> list[Any]:
        kind = payload[0]
        self._expect_len(payload, 2)
        flat = payload[1]
        if type(flat) is not list or len(flat) % stride:
            raise self._error(kind, "malformed claim list")
        count = len(flat) // stride
        if count > self._limits.frame_claims:
            raise self._error(
                kind, f"{count} records, over the limit of {self._limits.frame_claims} per frame "
                "(registry_frame_claims)"
            )
        return flat

    def _expect_len(self, payload: list[Any], length: int) -> None:
        if len(payload) != length:
            raise self._error(payload[0], f"has {len(payload)} items, not {length}")

    def _expect_phase(self, kind: str, phase: str) -> None:
        if self.phase != phase:
            when = {
                "connected": "before the peer's snapshot began",
                "snapshot": "in the middle of the peer's snapshot",
                "live": "after the peer's snapshot ended",
                "closed": "after the connection closed",
            }[self.phase]
            raise self._error(kind, f"sent {when}")

    def _seq(self, payload: list[Any]) -> int:
        value = payload[1]
        if type(value) is not int or not 0 <= value < UINT64_LIMIT:
            raise self._error(payload[0], "bad sequence number")
        return value

    def _error(self, kind: str, reason: str) -> ProtocolError:
        return ProtocolError(f"registry frame {kind} from node {self._peer}: {reason}")


# ------------------------------------------------------------------------------- notices


class NoticeThrottle:
    """At most one peer-caused ``MultipleClaim`` per (claimant, name) per ``interval`` seconds.

    :meth:`offer` takes the pairs a peer's frame asks to notify and returns those to notify now:
    a pair not notified in the last ``interval``. The others are deferred, once each however
    often they are offered again, until their interval ends: :meth:`next_due` says when,
    :meth:`due` hands them back then, and the caller notifies those still in conflict (the name
    may have lost its other claimants meanwhile). So a peer that flaps a name can cause a
    claimant at most one notice per interval per name, and no conflict is left unreported.
    Memory: one entry per pair notified within the last interval or deferred, both bounded by
    the local claims. Time is the caller's clock (``loop.time()``), in seconds. ``interval`` 0
    sends everything at once.
    """

    __slots__ = ("_deferred", "_due", "_interval", "_order", "_sent", "coalesced")

    def __init__(self, interval: float) -> None:
        if type(interval) not in (int, float) or not 0 <= interval < float("inf"):
            raise ValueError(f"interval must be a finite number >= 0, got {interval!r}")
        self._interval = float(interval)
        # pair -> when it was last notified; insertion order is time order.
        self._sent: dict[tuple[MailboxID, str], float] = {}
        # deferred pairs, and a heap of (due time, tie-breaker, pair) over them.
        self._deferred: set[tuple[MailboxID, str]] = set()
        self._due: list[tuple[float, int, tuple[MailboxID, str]]] = []
        self._order = 0  # tie-breaker: pairs themselves are not ordered
        #: Offers not notified at once because the pair was notified or deferred already.
        self.coalesced = 0

    def offer(self, pairs: Iterable[tuple[MailboxID, str]], now: float) -> list[tuple[MailboxID, str]]:
        """The pairs of ``pairs`` to notify now (recorded as notified at ``now``); the rest wait."""
        interval = self._interval
        if not interval:
            return list(pairs)
        sent = self._sent
        horizon = now - interval
        while sent:  # forget pairs whose interval is over (oldest first)
            oldest = next(iter(sent))
            if sent[oldest] > horizon:
                break
            del sent[oldest]
        out: list[tuple[MailboxID, str]] = []
        for pair in pairs:
            if pair in self._deferred:
                self.coalesced += 1
                continue
            last = sent.get(pair)
            if last is None:
                sent[pair] = now
                out.append(pair)
            else:
                self.coalesced += 1
                self._deferred.add(pair)
                self._order += 1
                heapq.heappush(self._due, (last + interval, self._order, pair))
        return out

    def next_due(self) -> float | None:
        """When the earliest deferred pair is due, or None if nothing waits."""
        return self._due[0][0] if self._due else None

    def due(self, now: float) -> list[tuple[MailboxID, str]]:
        """The deferred pairs due at ``now``, recorded as notified at ``now``; the caller
        notifies those still in conflict (and may skip the others: the conflict is over)."""
        out: list[tuple[MailboxID, str]] = []
        due, sent = self._due, self._sent
        while due and due[0][0] <= now:
            pair = heapq.heappop(due)[2]
            self._deferred.discard(pair)
            sent.pop(pair, None)
            sent[pair] = now
            out.append(pair)
        return out

    @property
    def waiting(self) -> int:
        """Pairs deferred now."""
        return len(self._deferred)
