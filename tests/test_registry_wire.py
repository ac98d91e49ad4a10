"""The registry's frames without I/O: building, checking, applying (``reign._core.registry_wire``).

Each refusal is checked to apply nothing of the frame; each limit at its bound and one past it.
The same functions run over real TLS in ``test_names_cluster.py`` and ``test_registry_hostile.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from reign._core.codec import decode, encode
from reign._core.ids import MailboxID
from reign._core.registry import (
    CLAIM_UNIT_BYTES,
    MAX_NAME_BYTES,
    NO_EFFECTS,
    ClaimChange,
    RegistryState,
    claim_units,
)
from reign._core.registry_wire import (
    CHUNK_BYTES,
    DEFAULT_FRAME_CLAIMS,
    DEFAULT_PEER_CLAIMS,
    NoticeThrottle,
    PeerRegistry,
    Received,
    RegistryLimits,
    change_payloads,
    snapshot_payloads,
    sync_payload,
)
from reign._errors import ProtocolError

ME, PEER, PEER_INCARNATION = 0, 1, 5


def peer_id(serial: int) -> MailboxID:
    return MailboxID(PEER, PEER_INCARNATION, serial)


def wire(payload: Any) -> Any:
    """As the cluster delivers a CONTROL payload: encoded and decoded."""
    return decode(encode(payload), lambda m: m)


def connected(limits: RegistryLimits | None = None, state: RegistryState | None = None) -> PeerRegistry:
    return PeerRegistry(state or RegistryState(ME), PEER, PEER_INCARNATION, limits or RegistryLimits())


def live(limits: RegistryLimits | None = None) -> tuple[RegistryState, PeerRegistry]:
    state = RegistryState(ME)
    peer = connected(limits, state)
    peer.receive(["reg.begin"])
    peer.receive(["reg.end"])
    return state, peer


# ------------------------------------------------------------------------------ applying


def test_snapshot_and_change_frames_apply() -> None:
    state = RegistryState(ME)
    x = MailboxID(ME, 1, 1)
    state.register_local("c", x)
    peer = connected(state=state)
    assert state.incarnation_of(PEER) == PEER_INCARNATION and peer.phase == "connected"
    assert peer.receive(["reg.begin"]) == Received("reg.begin")
    assert peer.phase == "snapshot"
    assert peer.receive(wire(["reg.chunk", ["a", 1, "b", 2]])).claims == 2
    assert state.lookup("a") == peer_id(1)  # a chunk applies on arrival
    peer.receive(["reg.chunk", []])
    assert peer.receive(["reg.end"]) == Received("reg.end", claims=2)
    assert peer.phase == "live"
    assert state.lookup("b") == peer_id(2)
    got = peer.receive(wire(["reg.changes", ["+", "c", 3, "-", "a", 1, "+", "d", 3]]))
    assert got.kind == "reg.changes" and got.claims == 3
    assert got.effects.notify == ((x, "c"),)
    assert [state.seen(n) for n in "acd"] == [False, True, True]
    assert state.lookup_all("c") == [x, peer_id(3)]
    assert peer.receive(["reg.sync", 7]) == Received("reg.sync", answer=["reg.synced", 7])
    assert peer.receive(["reg.synced", 9]) == Received("reg.synced", synced=9)
    assert peer.close() == NO_EFFECTS
    assert not state.seen("b") and state.lookup_all("c") == [x]
    assert peer.phase == "closed" and peer.close() == NO_EFFECTS  # idempotent
    with pytest.raises(ProtocolError, match="after the connection closed"):
        peer.receive(["reg.changes", []])


def test_one_frame_notifies_a_claimant_once_however_many_claimants_it_adds() -> None:
    state = RegistryState(ME)
    x = MailboxID(ME, 1, 1)
    state.register_local("svc", x)
    peer = connected(state=state)
    peer.receive(["reg.begin"])
    got = peer.receive(["reg.chunk", [v for i in range(1, 1001) for v in ("svc", i)]])
    assert got.effects.notify == ((x, "svc"),)
    peer.receive(["reg.end"])
    got = peer.receive(["reg.changes", [v for i in range(1001, 2001) for v in ("+", "svc", i)]])
    assert got.effects.notify == ((x, "svc"),)
    assert len(state.lookup_all("svc")) == 2001 and state.lookup("svc") == x


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (None, "not a .kind"),
        ([], "not a .kind"),
        ([3], "not a .kind"),
        (("reg.begin",), "not a .kind"),
        (["reg.unknown"], "unknown registry frame"),
        (["reg.begin", 1], "has 2 items"),
        (["reg.end"], "before the peer's snapshot began"),
        (["reg.chunk", ["a", 1]], "before the peer's snapshot began"),
        (["reg.changes", ["+", "a", 1]], "before the peer's snapshot began"),
        (["reg.sync"], "has 1 items"),
        (["reg.sync", -1], "bad sequence number"),
        (["reg.sync", 2**64], "bad sequence number"),
        (["reg.synced", "1"], "bad sequence number"),
    ],
)
def test_frames_out_of_shape_or_order_are_refused(frame: object, reason: str) -> None:
    peer = connected()
    with pytest.raises(ProtocolError, match=reason):
        peer.receive(frame)
    assert peer.phase == "connected"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (["*", "a", 1], "unknown change"),
        (["+", "a"], "malformed claim list"),
        ("+a1", "malformed claim list"),
        (["+", "", 1], "cannot be empty"),
        (["+", 7, 1], "a name is a str"),
        (["+", b"a", 1], "a name is a str"),
        (["+", "\udcff", 1], "no lone surrogates"),
        (["+", "x" * (MAX_NAME_BYTES + 1), 1], "at most 512 UTF-8 bytes"),
        (["+", "é" * (MAX_NAME_BYTES // 2 + 1), 1], "at most 512 UTF-8 bytes"),
        (["+", "x" * 2**20, 1], "at most 512 UTF-8 bytes, this one is 1048576"),
        (["+", "a", -1], "bad serial"),
        (["+", "a", 2**64], "bad serial"),
        (["+", "a", "1"], "bad serial"),
        (["+", "a", 1.0], "bad serial"),
        (["+", "a", True], "bad serial"),
    ],
)
def test_bad_changes_are_refused_and_apply_nothing(changes: object, reason: str) -> None:
    state, peer = live()
    good = ["+", "ok", 1, "-", "ok", 1, "+", "ok2", 2]
    flat = good + changes if isinstance(changes, list) else changes
    with pytest.raises(ProtocolError, match=reason):
        peer.receive(["reg.changes", flat])
    assert not state.seen("ok") and not state.seen("ok2") and state.claims_of(PEER) == 0


def test_names_at_the_limit_are_accepted() -> None:
    state, peer = live()
    longest = ["x" * MAX_NAME_BYTES, "é" * (MAX_NAME_BYTES // 2), "€" * (MAX_NAME_BYTES // 3)]
    peer.receive(wire(["reg.changes", [v for i, n in enumerate(longest) for v in ("+", n, i)]]))
    assert all(state.seen(n) for n in longest)


def test_snapshot_order_is_enforced() -> None:
    state = RegistryState(ME)
    peer = connected(state=state)
    peer.receive(["reg.begin"])
    for bad, reason in [
        (["reg.begin"], "in the middle of a snapshot"),
        (["reg.changes", ["+", "a", 1]], "in the middle of the peer's snapshot"),
        (["reg.chunk", ["a"]], "malformed"),
        (["reg.chunk", "ab"], "malformed"),
        (["reg.chunk", ["", 1]], "cannot be empty"),
        (["reg.chunk", [None, 1]], "a name is a str"),
        (["reg.chunk", ["a", 1.0]], "bad serial"),
        (["reg.chunk", ["ok", 1, "a", 1.0]], "bad serial"),
        (["reg.end", 1], "has 2 items"),
    ]:
        with pytest.raises(ProtocolError, match=reason):
            peer.receive(bad)
    assert not state.seen("ok") and peer.phase == "snapshot"
    peer.receive(["reg.end"])
    for bad, reason in [
        (["reg.begin"], "a second snapshot on one connection"),
        (["reg.chunk", ["a", 1]], "after the peer's snapshot ended"),
        (["reg.end"], "after the peer's snapshot ended"),
    ]:
        with pytest.raises(ProtocolError, match=reason):
            peer.receive(bad)


# ------------------------------------------------------------------------------ limits


def test_frame_limit_refuses_one_record_more_and_applies_nothing() -> None:
    limits = RegistryLimits(frame_claims=10)
    state, peer = live(limits)
    peer.receive(["reg.changes", [v for i in range(10) for v in ("+", "n", i)]])
    assert len(state.lookup_all("n")) == 10
    with pytest.raises(ProtocolError, match=r"11 records, over the limit of 10 per frame \(registry_frame_claims\)"):
        peer.receive(["reg.changes", [v for i in range(10, 21) for v in ("+", "n", i)]])
    assert len(state.lookup_all("n")) == 10
    state2 = RegistryState(ME)
    peer2 = connected(limits, state2)
    peer2.receive(["reg.begin"])
    with pytest.raises(ProtocolError, match="11 records"):
        peer2.receive(["reg.chunk", [v for i in range(11) for v in (f"n{i}", i)]])
    assert state2.claims_of(PEER) == 0


def test_peer_budget_counts_claim_units_and_refuses_the_frame_that_exceeds_it() -> None:
    limits = RegistryLimits(peer_claims=100)
    state, peer = live(limits)
    peer.receive(["reg.changes", [v for i in range(99) for v in ("+", f"n{i}", i)]])
    assert state.units_of(PEER) == 99
    long_name = "y" * MAX_NAME_BYTES
    assert claim_units(long_name) == 3 and claim_units("n1") == 1
    with pytest.raises(ProtocolError, match=r"would cost 102 claim units, over the limit of 100 \(registry_peer_claims\)"):
        peer.receive(["reg.changes", ["+", long_name, 1000]])
    assert not state.seen(long_name) and state.units_of(PEER) == 99
    peer.receive(["reg.changes", ["+", "last", 1000]])  # exactly at the limit
    with pytest.raises(ProtocolError, match="101 claim units"):
        peer.receive(["reg.changes", ["+", "more", 1001, "+", "last", 1000, "-", "nope", 5]])
    assert state.seen("last") and not state.seen("more")
    # What the frame removes makes room for what it adds: the count is exact.
    peer.receive(["reg.changes", ["+", "more", 1001, "-", "n0", 0, "+", "more", 1001]])
    assert state.units_of(PEER) == 100 and state.claims_of(PEER) == 100


def test_peer_budget_bounds_a_snapshot_and_the_memory_of_lost_claims() -> None:
    limits = RegistryLimits(peer_claims=50)
    state = RegistryState(ME)
    x = MailboxID(ME, 1, 1)
    for i in range(40):
        state.register_local(f"n{i}", x)
    peer = connected(limits, state)
    peer.receive(["reg.begin"])
    peer.receive(["reg.chunk", [v for i in range(40) for v in (f"n{i}", i)]])
    with pytest.raises(ProtocolError, match="51 claim units"):
        peer.receive(["reg.chunk", [v for i in range(40, 51) for v in (f"m{i}", i)]])
    peer.receive(["reg.end"])
    peer.close()  # the 40 claims conflicting with x are remembered (invariant 5), and counted
    assert state.claims_of(PEER) == 0 and state.remembered_of(PEER) == 40 == state.units_of(PEER)
    again = connected(limits, state)
    again.receive(["reg.begin"])
    with pytest.raises(ProtocolError, match="51 claim units"):  # 40 remembered + 11 new
        again.receive(["reg.chunk", [v for i in range(11) for v in (f"other{i}", 100 + i)]])
    # The same claims coming back take their memory's place; the end forgets the rest.
    again.receive(["reg.chunk", [v for i in range(30) for v in (f"n{i}", i)]])
    assert state.units_of(PEER) == 40 and state.claims_of(PEER) == 30
    assert again.receive(["reg.end"]).effects == NO_EFFECTS
    assert state.units_of(PEER) == 30 and state.remembered_of(PEER) == 0


def test_limits_are_validated() -> None:
    for bad in ({"frame_claims": 0}, {"frame_claims": 1.5}, {"peer_claims": -1}, {"max_frame_bytes": 100},
                {"snapshot_timeout": 0}, {"notice_interval": -1}, {"notice_interval": float("inf")}):
        with pytest.raises(ValueError):
            RegistryLimits(**bad)
    assert RegistryLimits().frame_claims == DEFAULT_FRAME_CLAIMS
    assert RegistryLimits().peer_claims == DEFAULT_PEER_CLAIMS
    # The default per-peer budget is the ~64 MiB the hardening issue asks for.
    assert 60 * 2**20 <= DEFAULT_PEER_CLAIMS * CLAIM_UNIT_BYTES <= 64 * 2**20


# ------------------------------------------------------------------------------ building


def test_payloads_fit_the_receivers_limits_and_round_trip() -> None:
    src, dst = RegistryState(PEER), RegistryState(ME)
    boxes = [MailboxID(PEER, PEER_INCARNATION, i) for i in range(7)]
    names = [f"{i:04d}" + "é" * 200 for i in range(60)] + [f"s{i}" for i in range(300)]
    changes = []
    for i, name in enumerate(names):
        changes += src.register_local(name, boxes[i % 7]).broadcast
    for limits in (RegistryLimits(frame_claims=50, max_frame_bytes=4096), RegistryLimits(max_frame_bytes=1024)):
        payloads = snapshot_payloads(src.local_snapshot(), limits)
        assert payloads[0] == ["reg.begin"] and payloads[-1] == ["reg.end"]
        for payload in payloads[1:-1] + change_payloads(changes, limits):
            assert len(payload[1]) // (2 if payload[0] == "reg.chunk" else 3) <= limits.frame_claims
            assert len(encode(payload)) <= min(limits.max_frame_bytes, CHUNK_BYTES)
        peer = PeerRegistry(RegistryState(ME), PEER, PEER_INCARNATION, limits)
        for payload in payloads:
            peer.receive(wire(payload))
    peer = PeerRegistry(dst, PEER, PEER_INCARNATION, RegistryLimits())
    for payload in [["reg.begin"], ["reg.end"], *change_payloads(changes, RegistryLimits())]:
        peer.receive(wire(payload))
    assert [dst.lookup(n) for n in names] == [src.lookup(n) for n in names]
    removals = src.mailbox_closed(boxes[0]).broadcast
    for payload in change_payloads(removals, RegistryLimits(frame_claims=3)):
        peer.receive(wire(payload))
    assert dst.local_snapshot() == [] and dst.claims_of(PEER) == src.claims_of(PEER) == len(names) - 52
    assert change_payloads([], RegistryLimits()) == []
    assert snapshot_payloads([], RegistryLimits()) == [["reg.begin"], ["reg.end"]]
    assert sync_payload(3) == ["reg.sync", 3]
    assert change_payloads([ClaimChange("remove", "n", boxes[1])], RegistryLimits()) == [["reg.changes", ["-", "n", 1]]]


# ------------------------------------------------------------------------------ notices

X, Y = MailboxID(ME, 1, 1), MailboxID(ME, 1, 2)


def test_throttle_sends_once_per_interval_and_coalesces_the_rest() -> None:
    throttle = NoticeThrottle(1.0)
    assert throttle.offer([(X, "a"), (Y, "a"), (X, "b")], 10.0) == [(X, "a"), (Y, "a"), (X, "b")]
    assert throttle.next_due() is None
    for t in (10.1, 10.2, 10.3):  # a flapping peer: one deferred notice, however many flips
        assert throttle.offer([(X, "a")], t) == []
    assert throttle.waiting == 1 and throttle.coalesced == 3 and throttle.next_due() == 11.0
    assert throttle.due(10.9) == []
    assert throttle.due(11.0) == [(X, "a")]
    assert throttle.waiting == 0 and throttle.next_due() is None
    assert throttle.offer([(X, "a")], 11.5) == []  # the deferred notice started a new interval
    assert throttle.offer([(Y, "a"), (X, "b")], 11.5) == [(Y, "a"), (X, "b")]  # theirs are over
    assert throttle.due(12.0) == [(X, "a")]


def test_throttle_due_order_and_memory_is_bounded() -> None:
    throttle = NoticeThrottle(2.0)
    throttle.offer([(X, "a")], 0.0)
    throttle.offer([(Y, "a")], 1.0)
    throttle.offer([(Y, "a")], 1.5)  # due at 3.0
    throttle.offer([(X, "a")], 1.6)  # due at 2.0
    assert throttle.next_due() == 2.0
    assert throttle.due(5.0) == [(X, "a"), (Y, "a")]
    for i in range(1000):
        throttle.offer([(X, f"n{i}")], 10.0 + i)
    assert len(throttle._sent) <= 3  # pairs whose interval is over are forgotten


def test_throttle_interval_zero_sends_everything() -> None:
    throttle = NoticeThrottle(0)
    assert throttle.offer([(X, "a")], 1.0) == [(X, "a")]
    assert throttle.offer([(X, "a")], 1.0) == [(X, "a")]
    assert throttle.next_due() is None
    with pytest.raises(ValueError):
        NoticeThrottle(-1)
