"""The frame format between two nodes: constants, headers and the bytes of each frame (sans-IO).

Protocol version :data:`PROTOCOL_VERSION` = 2. Every frame::

    +----------------+------------+---------------------+
    | length N (u32) | type (u8)  | body (N - 1 bytes)  |
    +----------------+------------+---------------------+

``N`` is big-endian and counts the type byte and the body; ``1 <= N <= max_frame_bytes``.
A header announcing ``N == 0`` or more than ``max_frame_bytes`` is refused as soon as its 4
bytes arrive (:mod:`.protocol`): nothing of the announced size is ever allocated or awaited.

=========  ====  =======================================================================  =====
type       code  body                                                                     when
=========  ====  =======================================================================  =====
HELLO      1     CBOR map ``{"v": 2, "node": int, "inc": int, "cluster": bytes(32)}``     first
ACCEPT     2     empty: "I validated your HELLO"                                          once
MESSAGE    3     target incarnation (u64 BE) + target serial (u64 BE) + CBOR payload      est.
MONITOR    4     ``bytes(mid)`` (18 bytes, see :mod:`.ids`) of a mailbox on the           est.
                 *receiver*: "send me DOWN(mid) when it closes"
DEMONITOR  5     the same: cancels a MONITOR                                              est.
DOWN       6     ``bytes(mid)`` of a mailbox on the *sender* + CBOR reason: "it closed"   est.
TICK       7     empty: keepalive                                                         est.
CONTROL    8     CBOR payload for the registry (:mod:`.registry_wire`), opaque here       est.
LINK       9     ``bytes(origin)`` (on the sender) + ``bytes(target)`` (on the receiver)  est.
UNLINK     10    the same: removes that link                                              est.
EXIT       11    flags (u8) + ``bytes(target)`` (on the receiver) + ``bytes(origin)``     est.
                 (on the sender; only if flag 1) + CBOR reason
NAMED      12    name length (u16 BE) + name (UTF-8) + CBOR payload: a message for the    est.
                 mailbox registered locally under that name on the receiver
=========  ====  =======================================================================  =====

("est." = only once the handshake is established.) A MESSAGE's target node is implicitly the
receiving node. MONITOR/DEMONITOR/DOWN are Erlang's monitor, demonitor and ``'DOWN'``; they
carry one entry per (peer, target), however many local watchers share it. LINK/UNLINK/EXIT are
Erlang's links and exit signals: EXIT flag 1 (:data:`EXIT_HAS_ORIGIN`) says an origin follows
(``reign.exit`` called from code that is not a process has none), flag 2
(:data:`EXIT_LINKED`) says the signal comes from a link (the origin closed) rather than from
``reign.exit``; an untrappable ``"kill"`` is only ever an ``exit`` signal. NAMED is Erlang's
``{Name, Node} ! Msg``: a name the receiver does not know drops the message, as Erlang does.

Version history: 1 (round 1) had no reasons, links, exit signals or named sends, and called
MONITOR/DEMONITOR/DOWN LINK/UNLINK/CLOSED. Nodes of different versions refuse each other's HELLO.

Limits:

* :data:`DEFAULT_MAX_FRAME_BYTES` = 16 MiB + 64: a 16 MiB message payload plus room for the 17
  bytes of type and MESSAGE header (the connector passes ``max_message_bytes +
  MESSAGE_OVERHEAD`` instead).
* HELLO bodies are at most :data:`MAX_HELLO_BODY` bytes (a valid one is ~60): a peer cannot make
  us buffer or decode megabytes before it has even said who it is.
"""

from __future__ import annotations

import enum
import struct

from .ids import BINARY_SIZE, MailboxID

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME_BYTES",
    "MESSAGE_OVERHEAD",
    "CLUSTER_ID_BYTES",
    "MAX_HELLO_BODY",
    "ID_BODY_SIZE",
    "BODY_SIZES",
    "MIN_BODY_SIZES",
    "LINK_BODY_SIZE",
    "EXIT_HAS_ORIGIN",
    "EXIT_LINKED",
    "FrameType",
    "LENGTH_LIMIT",
    "HEADER",
    "LENGTH",
    "MESSAGE_HEADER",
    "message_header",
    "message_frame",
    "id_frame",
    "down_frame",
    "link_frame",
    "exit_frame",
    "named_frame",
    "empty_frame",
    "payload_frame",
]

#: Version carried in HELLO; a peer with another version is refused (HandshakeError).
PROTOCOL_VERSION = 2

#: Default largest N (type byte + body): a 16 MiB payload plus room for the frame headers.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024 + 64

#: Bytes a MESSAGE frame adds to its payload: length (4) + type (1) + incarnation and serial (16).
MESSAGE_OVERHEAD = 21

#: Size of the cluster identity carried in HELLO (a SHA-256 of the cluster CA).
CLUSTER_ID_BYTES = 32

#: A valid HELLO body is ~60 bytes; refuse big ones before buffering or decoding them.
MAX_HELLO_BODY = 256

#: The body of MONITOR, DEMONITOR and DOWN: the binary form of a MailboxID.
ID_BODY_SIZE = BINARY_SIZE

#: The body of LINK and UNLINK: origin and target ids.
LINK_BODY_SIZE = 2 * ID_BODY_SIZE

#: EXIT flags: an origin id follows the target; the signal comes from a link.
EXIT_HAS_ORIGIN = 1
EXIT_LINKED = 2


#: N is a u32.
LENGTH_LIMIT = 1 << 32


class FrameType(enum.IntEnum):
    HELLO = 1
    ACCEPT = 2
    MESSAGE = 3
    MONITOR = 4
    DEMONITOR = 5
    DOWN = 6
    TICK = 7
    CONTROL = 8
    LINK = 9
    UNLINK = 10
    EXIT = 11
    NAMED = 12


#: Exact body sizes; the other frame types vary (see MIN_BODY_SIZES).
BODY_SIZES = {
    FrameType.ACCEPT: 0,
    FrameType.MONITOR: ID_BODY_SIZE,
    FrameType.DEMONITOR: ID_BODY_SIZE,
    FrameType.TICK: 0,
    FrameType.LINK: LINK_BODY_SIZE,
    FrameType.UNLINK: LINK_BODY_SIZE,
}

#: Smallest bodies of the variable ones: an id plus one CBOR byte, flags plus an id plus one
#: CBOR byte, a name length plus a 1-byte name plus one CBOR byte.
MIN_BODY_SIZES = {
    FrameType.MESSAGE: 16,
    FrameType.DOWN: ID_BODY_SIZE + 1,
    FrameType.EXIT: 1 + ID_BODY_SIZE + 1,
    FrameType.NAMED: 2 + 1 + 1,
}

HEADER = struct.Struct(">IB")
LENGTH = struct.Struct(">I")
MESSAGE_HEADER = struct.Struct(">IBQQ")

_pack_header = HEADER.pack
_pack_message_header = MESSAGE_HEADER.pack
_MESSAGE = int(FrameType.MESSAGE)


def message_header(incarnation: int, serial: int, payload_size: int) -> bytes:
    """The 21 bytes that precede a MESSAGE payload of ``payload_size`` bytes.

    For connectors that queue header and payload separately and join them in one write. Does
    not check the frame limit (the caller checks its ``max_message_bytes``).
    """
    return _pack_message_header(17 + payload_size, _MESSAGE, incarnation, serial)


def message_frame(incarnation: int, serial: int, payload: bytes) -> bytes:
    """A whole MESSAGE frame (header and payload); the caller checks the frame limit."""
    return _pack_message_header(17 + len(payload), _MESSAGE, incarnation, serial) + payload


def id_frame(frame_type: FrameType, target: MailboxID) -> bytes:
    """A MONITOR or DEMONITOR frame for ``target``."""
    return _pack_header(1 + ID_BODY_SIZE, frame_type) + bytes(target)


def down_frame(target: MailboxID, reason: bytes) -> bytes:
    """A DOWN frame: ``target`` closed with ``reason`` (CBOR); the caller checks the frame limit."""
    return _pack_header(1 + ID_BODY_SIZE + len(reason), FrameType.DOWN) + bytes(target) + reason


def link_frame(frame_type: FrameType, origin: MailboxID, target: MailboxID) -> bytes:
    """A LINK or UNLINK frame between ``origin`` (on the sender) and ``target``."""
    return _pack_header(1 + LINK_BODY_SIZE, frame_type) + bytes(origin) + bytes(target)


def exit_frame(target: MailboxID, origin: MailboxID | None, reason: bytes, linked: bool) -> bytes:
    """An EXIT frame; the caller checks the frame limit."""
    flags = (EXIT_HAS_ORIGIN if origin is not None else 0) | (EXIT_LINKED if linked else 0)
    body = bytes([flags]) + bytes(target) + (bytes(origin) if origin is not None else b"") + reason
    return _pack_header(1 + len(body), FrameType.EXIT) + body


def named_frame(name: bytes, payload: bytes) -> bytes:
    """A NAMED frame for the UTF-8 ``name``; the caller checks the frame limit and the name."""
    body = len(name).to_bytes(2, "big") + name + payload
    return _pack_header(1 + len(body), FrameType.NAMED) + body


def empty_frame(frame_type: FrameType) -> bytes:
    """An ACCEPT or TICK frame."""
    return _pack_header(1, frame_type)


def payload_frame(frame_type: FrameType, body: bytes) -> bytes:
    """A HELLO or CONTROL frame; the caller checks the frame limit."""
    return _pack_header(1 + len(body), frame_type) + body
