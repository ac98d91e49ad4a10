"""From the bytes read from a peer to deliveries and events: the one receive path (sans-IO).

:meth:`Inbound.receive` is what the asyncio connection calls with each read, and what the tests
(hostile bytes, fuzzing) call the same way: it feeds the bytes to the connection's
:class:`~.protocol.PeerProtocol`, decodes every message payload in place
(:class:`~.codec.BatchDecoder`), hands each message to the local mailbox it is for, and reports
every other frame, in order, to the caller's callbacks.

Invariants:

* Order: frames are acted on in the order they arrived; a control event (a DOWN, a registry
  frame) is reported after the messages before it were delivered and before the ones after it.
* Only messages for an open mailbox of this node's incarnation are decoded; one for a closed,
  unknown or earlier-incarnation mailbox is dropped unread (Erlang drops them too).
* A payload that does not decode raises :class:`~reign.DecodeError` after the messages before it
  were delivered; the caller closes the connection. Nothing else is delivered from that read.
* A message that is a system message (``MailboxClosed``, ``Exit``, ``MultipleClaim``) is a
  :class:`~reign.ProtocolError`: only a node's runtime makes those, for its own mailboxes, so a
  peer that sends one as a message is forging a notice.
* Exit reasons (DOWN, EXIT) are decoded here, so the events the caller sees carry values.
* Nothing here waits or does I/O; mailboxes are reached through :class:`Deliverable`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .._errors import ProtocolError
from .codec import BatchDecoder, decode
from .ids import MailboxID
from .messages import SYSTEM_MESSAGES
from .protocol import Control, Down, ExitSignal, Messages, Named, PeerProtocol

__all__ = ["Deliverable", "Inbound"]


class Deliverable(Protocol):
    """A local mailbox as the receive path sees it."""

    def deliver(self, msg: Any) -> None:
        """Queue ``msg`` (on the node's loop thread)."""
        ...


class Inbound:
    """The receive path of one node: shared by all its connections (reads are handled one at a
    time, on one thread).

    ``incarnation`` is this node's; ``lookup(serial)`` returns the open local mailbox with that
    serial or None; ``lookup_name(name)`` the open local mailbox registered as ``name`` or None;
    ``make_address(mailbox_id)`` builds the Address values found in messages.
    """

    __slots__ = ("_incarnation", "_lookup", "_lookup_name", "_make_address", "_decoder")

    def __init__(
        self,
        *,
        incarnation: int,
        lookup: Callable[[int], Deliverable | None],
        make_address: Callable[[MailboxID], Any],
        lookup_name: Callable[[str], Deliverable | None] = lambda name: None,
    ) -> None:
        self._incarnation = incarnation
        self._lookup = lookup
        self._lookup_name = lookup_name
        self._make_address = make_address
        self._decoder = BatchDecoder(make_address)

    def receive(
        self,
        protocol: PeerProtocol,
        data: bytes | bytearray | memoryview,
        on_event: Callable[[Any], object],
        on_control: Callable[[Any], object],
    ) -> int:
        """Act on one read from the peer of ``protocol``; returns the number of MESSAGE frames.

        Messages (MESSAGE and NAMED frames) go to their mailboxes. Every other event
        (:class:`~.protocol.Established`, :class:`~.protocol.Monitor`,
        :class:`~.protocol.Demonitor`, :class:`~.protocol.Down`, :class:`~.protocol.Link`,
        :class:`~.protocol.Unlink`, :class:`~.protocol.ExitSignal`, :class:`~.protocol.Tick`) is
        passed to ``on_event``, reasons decoded; a truthy return stops this read there (the
        connection was closed). A CONTROL frame's payload is decoded and passed to
        ``on_control``. Raises :class:`~reign.ProtocolError` (and subclasses) for anything the
        peer must not send, and whatever the callbacks raise.
        """
        events = protocol.receive_data(data)
        if not events:
            return 0
        count = 0
        decoder = self._decoder
        decode_at = None
        try:
            for event in events:
                if type(event) is Messages:
                    if decode_at is None:  # every run of one read shares the read's bytes
                        decode_at = decoder.start(event.data)
                    frames = event.frames
                    count += len(frames)
                    incarnation = self._incarnation
                    lookup = self._lookup
                    for target_incarnation, serial, start, end in frames:
                        if target_incarnation != incarnation:
                            continue
                        mbox = lookup(serial)
                        if mbox is not None:
                            msg = decode_at(start, end)
                            if type(msg) in SYSTEM_MESSAGES:
                                raise _forged(msg)
                            mbox.deliver(msg)
                elif type(event) is Control:
                    on_control(decode(event.payload, self._make_address))
                elif type(event) is Named:
                    mbox = self._lookup_name(event.name)
                    if mbox is not None:
                        msg = decode(event.payload, self._make_address)
                        if type(msg) in SYSTEM_MESSAGES:
                            raise _forged(msg)
                        mbox.deliver(msg)
                else:
                    if type(event) is Down or type(event) is ExitSignal:
                        event = event._replace(reason=decode(event.reason, self._make_address))
                    if on_event(event):
                        break
        finally:
            if decode_at is not None:
                decoder.finish()
        return count


def _forged(msg: Any) -> ProtocolError:
    return ProtocolError(
        f"peer sent a {type(msg).__name__} as a message: system messages come only from the runtime"
    )
