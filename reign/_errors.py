"""Every exception reign raises, in one place.

One base class, :class:`ReignError`; each subclass says whose fault it is:

* the caller misused the API: :class:`EncodeError`, :class:`CantGloballyRegisterError`,
  :class:`IllegalAddressFormatError`, :class:`ClusterSpecError`;
* the state of a mailbox: :class:`MailboxClosedError`, :class:`Empty`;
* a peer sent something unacceptable: :class:`DecodeError`, :class:`ProtocolError`,
  :class:`HandshakeError`. These close only the connection they arrived on.

Timeouts are the built-in :class:`TimeoutError`, as asyncio uses.
"""

from __future__ import annotations

__all__ = [
    "ReignError",
    "MailboxClosedError",
    "Empty",
    "EncodeError",
    "DecodeError",
    "CantGloballyRegisterError",
    "IllegalAddressFormatError",
    "ClusterSpecError",
    "HandshakeError",
    "ProtocolError",
]


class ReignError(Exception):
    """Base class of every error reign raises."""


class MailboxClosedError(ReignError):
    """A receive was attempted on (or was waiting on) a mailbox that is closed."""


class Empty(ReignError):
    """``receive_nowait`` found no queued message."""


class EncodeError(ReignError):
    """The caller's message cannot be encoded for the wire (unregistered type, too large, ...)."""


class ProtocolError(ReignError):
    """A peer broke the wire protocol; the connection it came on is closed."""


class DecodeError(ProtocolError):
    """Bytes from a peer are not a valid reign message; the connection is closed."""


class HandshakeError(ProtocolError):
    """A peer failed TLS or HELLO authentication (wrong CA, wrong node id, wrong cluster, ...)."""


class CantGloballyRegisterError(ReignError):
    """Only a live mailbox created on this node can claim a global name, and names are non-empty str."""


class IllegalAddressFormatError(ReignError, ValueError):
    """The text or bytes given to ``node.address`` are not a serialized address."""


class ClusterSpecError(ReignError, ValueError):
    """The cluster spec is invalid; the message names the offending field."""
