"""The sans-IO protocol: two PeerProtocol objects back to back in memory, real bytes."""

from __future__ import annotations

import os
import struct
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reign._core import codec as _codec
from reign._core import frames as _frames
from reign._core.frames import MESSAGE_OVERHEAD, PROTOCOL_VERSION, FrameType
from reign._core.ids import MailboxID
from reign._core.messages import KILL, KILLED, NORMAL
from reign._core.protocol import (
    Control,
    Demonitor,
    Down,
    Established,
    ExitSignal,
    Link,
    Message,
    Messages,
    Monitor,
    Named,
    PeerProtocol,
    Tick,
    Unlink,
)
from reign._errors import DecodeError, EncodeError, HandshakeError, ProtocolError

from wire_util import CLUSTER, INC_A, INC_B, established_pair
from wire_util import new_protocol as new

OTHER_CLUSTER = bytes(range(1, 33))


def enc(reason: Any) -> bytes:
    return _codec.encode(reason)


def flat(events: list[Any]) -> list[Any]:
    """Events with each Messages run expanded into its Message events."""
    out: list[Any] = []
    for event in events:
        out.extend(event.messages() if type(event) is Messages else [event])
    return out


def recv(proto: PeerProtocol, data: Any) -> list[Any]:
    return flat(proto.receive_data(data))


def frame(frame_type: int, body: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack(">IB", 1 + len(body) if length is None else length, frame_type) + body


def hello_frame(**fields: Any) -> bytes:
    body = {"v": PROTOCOL_VERSION, "node": 2, "inc": INC_B, "cluster": CLUSTER}
    for key, value in fields.items():
        if value is _DROP:
            del body[key]
        else:
            body[key] = value
    return frame(FrameType.HELLO, _codec.encode(body))


_DROP = object()
A_MAILBOX = MailboxID(1, INC_A, 5)  # on node 1 (a)
B_MAILBOX = MailboxID(2, INC_B, 9)  # on node 2 (b)


def all_frames(a: PeerProtocol) -> tuple[bytes, list[Any]]:
    """Every established-state frame a can send to b, and the events b must report."""
    payload = _codec.encode({"op": "chat", "text": "hi"})
    parts = [
        (a.message(B_MAILBOX, payload), Message(INC_B, 9, payload)),
        (a.message(B_MAILBOX, b""), Message(INC_B, 9, b"")),
        (a.monitor(B_MAILBOX), Monitor(B_MAILBOX)),
        (a.demonitor(B_MAILBOX), Demonitor(B_MAILBOX)),
        (a.down(A_MAILBOX, enc(NORMAL)), Down(A_MAILBOX, enc(NORMAL))),
        (a.link(A_MAILBOX, B_MAILBOX), Link(A_MAILBOX, B_MAILBOX)),
        (a.unlink(A_MAILBOX, B_MAILBOX), Unlink(A_MAILBOX, B_MAILBOX)),
        (a.exit(B_MAILBOX, A_MAILBOX, enc(KILLED), linked=True), ExitSignal(B_MAILBOX, A_MAILBOX, enc(KILLED), True)),
        (a.exit(B_MAILBOX, None, enc(KILL), linked=False), ExitSignal(B_MAILBOX, None, enc(KILL), False)),
        (a.named("ch3", payload), Named("ch3", payload)),
        (a.named("é" * 256, b"\x01"), Named("é" * 256, b"\x01")),
        (a.tick(), Tick()),
        (a.control(b"\xa1\x61k\x01"), Control(b"\xa1\x61k\x01")),
        (a.message(MailboxID(2, 7, 2**64 - 1), b"x" * 70_000), Message(7, 2**64 - 1, b"x" * 70_000)),
    ]
    return b"".join(p for p, _ in parts), [e for _, e in parts]


# ------------------------------------------------------------------------------ happy paths


def test_handshake_and_every_frame_type_both_ways() -> None:
    a, b = established_pair()
    assert (a.peer_node, a.peer_incarnation, b.peer_node, b.peer_incarnation) == (2, INC_B, 1, INC_A)
    stream, expected = all_frames(a)
    assert recv(b, stream) == expected
    back = b.message(A_MAILBOX, b"\x01") + b.down(B_MAILBOX, enc(NORMAL)) + b.monitor(A_MAILBOX) + b.tick()
    assert recv(a, back) == [Message(INC_A, 5, b"\x01"), Down(B_MAILBOX, enc(NORMAL)), Monitor(A_MAILBOX), Tick()]
    assert a.handshake_completed and b.handshake_completed


def test_accept_may_arrive_together_with_hello_and_messages() -> None:
    a, b = new(1, 2), new(2, 1)
    hello_a = a.data_to_send()
    hello_b = b.data_to_send()
    assert recv(b, hello_a) == []
    accept_b = b.data_to_send()
    assert accept_b == _frames.empty_frame(FrameType.ACCEPT)  # the protocol answers by itself
    # b's HELLO and ACCEPT reach a in one read
    recv(a, b"")
    events = recv(a, hello_b + accept_b)
    assert events == [Established(2, INC_B)]
    assert a.state == "established"
    assert a.data_to_send() == _frames.empty_frame(FrameType.ACCEPT)  # a's ACCEPT, still to write
    assert a.data_to_send() == b""


def test_hello_is_queued_at_construction_and_only_once() -> None:
    a = new(1, 2)
    hello = a.data_to_send()
    assert hello[4] == FrameType.HELLO and a.data_to_send() == b""
    assert _codec.decode(hello[5:], lambda m: m) == {
        "v": PROTOCOL_VERSION, "node": 1, "inc": INC_A, "cluster": CLUSTER
    }


def test_events_are_typed_values() -> None:
    assert Monitor(A_MAILBOX) != Demonitor(A_MAILBOX) != Down(A_MAILBOX, NORMAL)
    assert Link(A_MAILBOX, B_MAILBOX) != Unlink(A_MAILBOX, B_MAILBOX)
    assert Tick() != Established(1, 2)
    assert Message(1, 2, b"x") == Message(1, 2, b"x") and Message(1, 2, b"x") != (1, 2, b"x")
    assert len({Monitor(A_MAILBOX), Demonitor(A_MAILBOX), Monitor(A_MAILBOX)}) == 2
    message = Message(1, 2, b"x")
    assert (message.incarnation, message.serial, message.payload) == (1, 2, b"x")
    match message:
        case Message(incarnation=1, serial=2):
            pass
        case _:  # pragma: no cover
            pytest.fail("Message does not match by field")


def test_message_header_plus_payload_is_a_message_frame() -> None:
    a, _ = established_pair()
    payload = b"\x83\x01\x02\x03"
    assert _frames.message_header(INC_B, 9, len(payload)) + payload == a.message(B_MAILBOX, payload)
    assert len(a.message(B_MAILBOX, b"")) == MESSAGE_OVERHEAD == 21


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_whole_bytewise_and_random_chunks_give_the_same_events(data: st.DataObject) -> None:
    a, b1 = established_pair()
    _, b2 = established_pair()
    stream, expected = all_frames(a)
    stream = stream[:2000] + stream[2000:]  # keep the 70 KB frame; chunks are drawn below
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    got: list[Any] = []
    previous = 0
    for cut in cuts + [len(stream)]:
        got += recv(b2, stream[previous:cut])
        previous = cut
    assert got == expected
    assert recv(b1, stream) == expected


def test_byte_by_byte_including_the_handshake() -> None:
    a, b = new(1, 2), new(2, 1)
    events: list[Any] = []
    for byte in b.data_to_send():
        events += recv(a, bytes([byte]))
    assert events == []
    recv(b, a.data_to_send())
    for byte in b.data_to_send():
        events += recv(a, memoryview(bytes([byte])))
    recv(b, a.data_to_send())
    assert events == [Established(2, INC_B)]
    stream, expected = all_frames(a)
    got: list[Any] = []
    for i in range(len(stream)):
        got += recv(b, bytearray(stream[i : i + 1]))
    assert got == expected


def test_buffer_is_compacted_and_holds_at_most_one_partial_frame() -> None:
    a, b = established_pair()
    one = a.message(B_MAILBOX, b"x" * 100)
    for _ in range(1000):
        recv(b, one * 3 + one[:50])
        recv(b, one[50:])
    assert len(b._buffer) == 0
    recv(b, one * 10 + one[:7])
    assert len(b._buffer) == 7


# ------------------------------------------------------------------------------ framing violations


def test_oversized_header_fails_at_once_without_allocating() -> None:
    _, b = established_pair()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="over the limit"):
            recv(b, (2**31).to_bytes(4, "big"))  # not even the type byte yet
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert b.state == "failed"


@pytest.mark.parametrize("stage", ["handshaking", "established"])
def test_frame_limit_is_exact(stage: str) -> None:
    if stage == "established":
        a, b = established_pair(max_frame_bytes=1024)
        ok = a.message(B_MAILBOX, b"x" * (1024 - 17))
        assert recv(b, ok) == [Message(INC_B, 9, b"x" * 1007)]
        with pytest.raises(EncodeError, match="exceeds the frame limit"):
            a.message(B_MAILBOX, b"x" * (1024 - 16))
        with pytest.raises(EncodeError, match="exceeds the frame limit"):
            a.control(b"x" * 1024)
        assert a.state == "established"  # a local refusal does not fail the connection
        with pytest.raises(ProtocolError, match="1025 bytes announced"):
            recv(b, struct.pack(">IB", 1025, FrameType.MESSAGE))
    else:
        b = new(2, 1, max_frame_bytes=1024)
        with pytest.raises(ProtocolError, match="over the limit"):
            recv(b, struct.pack(">I", 1025))


def test_zero_length_frame() -> None:
    _, b = established_pair()
    with pytest.raises(ProtocolError, match="length 0"):
        recv(b, b"\x00\x00\x00\x00")
    fresh = new(2, 1)
    with pytest.raises(ProtocolError, match="length 0"):
        recv(fresh, b"\x00\x00\x00\x00\x01")


@pytest.mark.parametrize("frame_type", [0, 13, 42, 255])
def test_unknown_frame_type_fails_on_its_header(frame_type: int) -> None:
    _, b = established_pair()
    with pytest.raises(ProtocolError, match=f"unknown frame type {frame_type}"):
        recv(b, struct.pack(">IB", 1000, frame_type))  # body never sent


@pytest.mark.parametrize("frame_type", [2, 3, 4, 5, 6, 7, 8])
def test_any_frame_before_hello_fails(frame_type: int) -> None:
    b = new(2, 1)
    with pytest.raises(ProtocolError, match="before the peer's HELLO"):
        recv(b, frame(frame_type, b"\x00" * 16))
    assert b.state == "failed"


@pytest.mark.parametrize("frame_type", [3, 4, 5, 6, 7, 8])
def test_frames_between_hello_and_accept_fail(frame_type: int) -> None:
    b = new(2, 1)
    recv(b, hello_frame(node=1, inc=INC_A))
    with pytest.raises(ProtocolError, match="before the peer's ACCEPT"):
        recv(b, frame(frame_type, b"\x00" * 18))


def test_second_hello_and_second_accept_fail() -> None:
    a, b = established_pair()
    with pytest.raises(ProtocolError, match="second HELLO"):
        recv(b, hello_frame(node=1, inc=INC_A))
    _, b = established_pair()
    with pytest.raises(ProtocolError, match="second ACCEPT"):
        recv(b, frame(FrameType.ACCEPT))
    b = new(2, 1)
    with pytest.raises(ProtocolError, match="second HELLO"):
        recv(b, hello_frame(node=1, inc=INC_A) * 2)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (frame(FrameType.TICK, b"\x00"), "TICK body must be 0 bytes"),
        (frame(FrameType.MESSAGE, b"\x00" * 15), "shorter than 16"),
        (frame(FrameType.MESSAGE), "shorter than 16"),
        (frame(FrameType.MONITOR, bytes(B_MAILBOX)[:17]), "MONITOR body must be 18 bytes"),
        (frame(FrameType.DEMONITOR, bytes(B_MAILBOX) + b"\x00"), "DEMONITOR body must be 18 bytes"),
        (frame(FrameType.DOWN, b""), "DOWN body of 0 bytes is shorter than 19"),
        (frame(FrameType.DOWN, bytes(A_MAILBOX)), "DOWN body of 18 bytes is shorter than 19"),
        (frame(FrameType.LINK, bytes(A_MAILBOX)), "LINK body must be 36 bytes"),
        (frame(FrameType.LINK, bytes(B_MAILBOX) + bytes(B_MAILBOX)), "not on the peer's node"),
        (frame(FrameType.LINK, bytes(A_MAILBOX) + bytes(A_MAILBOX)), "not on this node"),
        (frame(FrameType.UNLINK, bytes(A_MAILBOX) + b"X" * 18), "not a mailbox id"),
        (frame(FrameType.EXIT, b"\x04" + bytes(B_MAILBOX) + b"\x01"), "unknown flags"),
        (frame(FrameType.EXIT, b"\x02" + bytes(B_MAILBOX) + b"\x01"), "link without its origin"),
        (frame(FrameType.EXIT, b"\x01" + bytes(B_MAILBOX) + bytes(A_MAILBOX)), "without a reason"),
        (frame(FrameType.EXIT, b"\x01" + bytes(B_MAILBOX) + bytes(B_MAILBOX) + b"\x01"), "not on the peer's node"),
        (frame(FrameType.EXIT, b"\x00" + bytes(A_MAILBOX) + b"\x01"), "not on this node"),
        (frame(FrameType.NAMED, b"\x00\x00x\x01"), "name of 0 bytes"),
        (frame(FrameType.NAMED, b"\x00\x05abc\x01"), "name of 5 bytes"),
        (frame(FrameType.NAMED, b"\x02\x01" + b"x" * 513 + b"\x01"), "name of 513 bytes"),
        (frame(FrameType.NAMED, b"\x00\x01\xff\x01"), "not UTF-8"),
        (frame(FrameType.MONITOR, b"X" + bytes(B_MAILBOX)[1:]), "not a mailbox id"),
        (frame(FrameType.MONITOR, bytes(A_MAILBOX)), "not on this node"),
        (frame(FrameType.DEMONITOR, bytes(A_MAILBOX)), "not on this node"),
        (frame(FrameType.DOWN, bytes(B_MAILBOX) + b"\x01"), "not on the peer's node"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_bodies(raw: bytes, match: str) -> None:
    _, b = established_pair()  # b is node 2; its peer is node 1
    with pytest.raises(ProtocolError, match=match):
        recv(b, raw)


def test_accept_with_a_body() -> None:
    b = new(2, 1)
    recv(b, hello_frame(node=1, inc=INC_A))
    with pytest.raises(ProtocolError, match="ACCEPT body must be 0 bytes"):
        recv(b, frame(FrameType.ACCEPT, b"\x00"))


def test_size_violations_are_caught_on_the_header_alone() -> None:
    _, b = established_pair()
    with pytest.raises(ProtocolError, match="MONITOR body must be 18 bytes"):
        recv(b, struct.pack(">IB", 1_000_000, FrameType.MONITOR))
    b = new(2, 1)
    with pytest.raises(ProtocolError, match="HELLO body of"):
        recv(b, struct.pack(">IB", 10_000_000, FrameType.HELLO))


def test_truncated_stream_is_not_an_error_until_more_arrives() -> None:
    a, b = established_pair()
    stream, expected = all_frames(a)
    assert recv(b, stream[:-1]) == expected[:-1]
    assert recv(b, stream[-1:]) == expected[-1:]


def test_after_an_error_the_protocol_stays_failed() -> None:
    a, b = established_pair()
    with pytest.raises(ProtocolError):
        recv(b, frame(99))
    assert b.state == "failed" and b.handshake_completed
    good = a.tick()
    for call in (
        lambda: recv(b, good),
        lambda: recv(b, b""),
        lambda: b.message(A_MAILBOX, b""),
        lambda: b.tick(),
        lambda: b.monitor(A_MAILBOX),
        lambda: b.down(B_MAILBOX, b"\x01"),
        lambda: b.control(b""),
    ):
        with pytest.raises(ProtocolError, match="already failed: unknown frame type 99"):
            call()
    assert b.state == "failed"


def test_events_before_an_error_in_the_same_chunk_are_dropped_with_it() -> None:
    a, b = established_pair()
    with pytest.raises(ProtocolError):
        recv(b, a.tick() + frame(0))
    assert b.state == "failed"


# ------------------------------------------------------------------------------ HELLO validation


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (hello_frame(v=1), HandshakeError, "unsupported protocol version 1"),
        (hello_frame(v=3), HandshakeError, "unsupported protocol version 3"),
        (hello_frame(v=0, extra=1), HandshakeError, "unsupported protocol version 0"),
        (hello_frame(cluster=OTHER_CLUSTER), HandshakeError, "another cluster"),
        (hello_frame(cluster=CLUSTER[:31]), HandshakeError, "another cluster"),
        (hello_frame(node=3), HandshakeError, "claims node 3 but its certificate proves node 1"),
        (hello_frame(node=2), HandshakeError, "this node"),
        (hello_frame(v="1"), ProtocolError, "no integer version"),
        (hello_frame(v=_DROP), ProtocolError, "no integer version"),
        (hello_frame(v=True), ProtocolError, "no integer version"),
        (hello_frame(node=_DROP), ProtocolError, "keys"),
        (hello_frame(extra=1), ProtocolError, "keys"),
        (hello_frame(node=256), ProtocolError, "0..255"),
        (hello_frame(node=-1), ProtocolError, "0..255"),
        (hello_frame(node="1"), ProtocolError, "0..255"),
        (hello_frame(node=(1,)), ProtocolError, "0..255"),
        (hello_frame(inc=-1), ProtocolError, "incarnation"),
        (hello_frame(inc=1.5), ProtocolError, "incarnation"),
        (hello_frame(cluster="x" * 32), ProtocolError, "cluster must be bytes"),
        (hello_frame(node=MailboxID(1, 2, 3)), ProtocolError, "0..255"),
        (frame(FrameType.HELLO, _codec.encode([1, 1, 2, CLUSTER])), ProtocolError, "not a map"),
        (frame(FrameType.HELLO, b"\xa1"), DecodeError, "bad HELLO"),
        (frame(FrameType.HELLO, _codec.encode({"v": 1}) + b"\x00"), DecodeError, "trailing"),
        (frame(FrameType.HELLO, b"\xc1\x00"), DecodeError, "tag 1"),
        (frame(FrameType.HELLO, b""), DecodeError, "bad HELLO"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_hello_validation(raw: bytes, error: type[Exception], match: str) -> None:
    b = new(2, 1)  # node 2, expecting node 1
    with pytest.raises(error, match=match):
        recv(b, raw)
    assert b.state == "failed" and b.peer_node is None


def test_hello_with_an_address_is_refused() -> None:
    from reign._core.address import Address

    body = _codec.encode({"v": 1, "node": Address(MailboxID(1, 2, 3), None), "inc": 1, "cluster": CLUSTER})  # type: ignore[arg-type]
    b = new(2, 1)
    with pytest.raises(DecodeError, match="addresses"):
        recv(b, frame(FrameType.HELLO, body))


def test_any_peer_id_is_accepted_without_expected_peer() -> None:
    b = new(2, None)
    assert recv(b, hello_frame(node=200, inc=0)) == []
    assert b.data_to_send()[-5:] == _frames.empty_frame(FrameType.ACCEPT)
    assert b.peer_node == 200 and b.peer_incarnation == 0


# ------------------------------------------------------------------------------ caller misuse


def test_outbound_calls_follow_the_state_machine() -> None:
    a = new(1, 2)
    with pytest.raises(RuntimeError, match="before the handshake completed"):
        a.message(B_MAILBOX, b"")
    with pytest.raises(RuntimeError, match="before the handshake completed"):
        a.tick()
    recv(a, hello_frame())
    with pytest.raises(RuntimeError, match="before the handshake completed"):
        a.monitor(B_MAILBOX)
    assert recv(a, frame(FrameType.ACCEPT)) == [Established(2, INC_B)]
    with pytest.raises(ValueError, match="not on the peer's node"):
        a.monitor(A_MAILBOX)
    with pytest.raises(ValueError, match="not on this node"):
        a.down(B_MAILBOX, b"\x01")
    with pytest.raises(ValueError, match="not on the peer's node"):
        a.link(A_MAILBOX, A_MAILBOX)
    with pytest.raises(ValueError, match="not on this node"):
        a.exit(B_MAILBOX, B_MAILBOX, b"\x01", linked=True)
    with pytest.raises(ValueError, match="always has an origin"):
        a.exit(B_MAILBOX, None, b"\x01", linked=True)
    for bad in ("", "x" * 513, "\udc80", 7):
        with pytest.raises(ValueError):
            a.named(bad, b"\x01")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        a.monitor(bytes(B_MAILBOX))  # type: ignore[arg-type]
    assert a.state == "established"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"local_node": 256}, {"local_node": -1}, {"local_incarnation": 2**64},
        {"cluster_id": b"x" * 31}, {"cluster_id": "x" * 32}, {"expected_peer": 300},
        {"max_frame_bytes": 2**32}, {"max_frame_bytes": 10},
    ],
)
def test_constructor_validates_arguments(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"local_node": 1, "local_incarnation": 1, "cluster_id": CLUSTER}
    args.update(kwargs)
    with pytest.raises(ValueError):
        PeerProtocol(**args)


# ------------------------------------------------------------------------------ fuzz


def _feed(wire: PeerProtocol, chunks: list[bytes]) -> tuple[list[Any], str | None]:
    events: list[Any] = []
    try:
        for chunk in chunks:
            events += recv(wire, chunk)
    except ProtocolError as exc:  # anything else fails the test
        return events, f"{type(exc).__name__}: {exc}"
    return events, None


frame_like = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda t, body, delta: struct.pack(">IB", max(0, len(body) + 1 + delta), t) + body,
        st.integers(0, 10), st.binary(max_size=30), st.sampled_from([0, 0, 0, -1, 1, -20]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(frame_like, max_size=8))
def test_fuzz_after_handshake_events_or_protocol_error_whole_equals_bytewise(parts: list[bytes]) -> None:
    stream = b"".join(parts)
    _, whole = established_pair()
    _, bytewise = established_pair()
    events_whole, error_whole = _feed(whole, [stream])
    events_bytewise, error_bytewise = _feed(bytewise, [stream[i : i + 1] for i in range(len(stream))])
    assert error_whole == error_bytewise
    if error_whole is None:
        assert events_whole == events_bytewise
        assert whole.state == "established"
    else:
        assert whole.state == bytewise.state == "failed"
        assert events_bytewise[: len(events_whole)] == events_whole  # whole drops the batch


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_like, max_size=5), st.booleans())
def test_fuzz_during_handshake(parts: list[bytes], with_hello: bool) -> None:
    stream = (hello_frame(node=1, inc=INC_A) if with_hello else b"") + b"".join(parts)
    events_whole, error_whole = _feed(new(2, 1), [stream])
    _, error_bytewise = _feed(new(2, 1), [stream[i : i + 1] for i in range(len(stream))])
    assert error_whole == error_bytewise
    assert all(type(e) in (Established, Message, Monitor, Demonitor, Down, Tick, Control) for e in events_whole)


def test_consecutive_messages_come_as_one_run_split_by_other_frames() -> None:
    """A run's frames point into one shared copy of the read; other frames split runs."""
    a, b = established_pair()
    payload = os.urandom(40)
    chunk = a.message(B_MAILBOX, payload) * 20_000 + a.tick() + a.message(B_MAILBOX, b"\x01") * 2
    events = b.receive_data(chunk)
    assert [type(e) for e in events] == [Messages, Tick, Messages]
    first, _, last = events
    assert first.data is last.data  # one copy per call
    assert len(first.frames) == 20_000 and len(last.frames) == 2
    frame_size = 21 + len(payload)
    for index, (incarnation, serial, start, end) in enumerate(first.frames):
        assert (incarnation, serial) == (INC_B, 9)
        assert (start, end) == (index * frame_size + 21, (index + 1) * frame_size)
    assert all(first.data[start:end] == payload for _, _, start, end in first.frames)
    assert last.messages() == [Message(INC_B, 9, b"\x01")] * 2
    # a view of 16-bit items still counts bytes
    two = a.message(B_MAILBOX, b"\x01\x02\x03") * 2
    assert len(two) % 2 == 0
    assert recv(b, memoryview(bytearray(two)).cast("H")) == [Message(INC_B, 9, b"\x01\x02\x03")] * 2
    # a frame cut across two calls still ends up in a run, with its own data
    half = len(a.message(B_MAILBOX, payload)) // 2
    one = a.message(B_MAILBOX, payload)
    assert b.receive_data(one[:half]) == []
    (run,) = b.receive_data(one[half:])
    assert run.messages() == [Message(INC_B, 9, payload)] and run.data == one
