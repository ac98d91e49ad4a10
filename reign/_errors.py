"""Every exception reign raises, in one place.

One base class, :class:`ReignError`; each subclass says whose fault it is:

* the caller misused the API: :class:`EncodeError`, :class:`CantGloballyRegisterError`,
  :class:`RegistrationError`, :class:`IllegalAddressFormatError`, :class:`ClusterSpecError`,
  :class:`SelfCallError`;
* the state of a mailbox: :class:`MailboxClosedError`, :class:`Empty`;
* a peer sent something unacceptable: :class:`DecodeError`, :class:`ProtocolError`,
  :class:`HandshakeError`. These close only the connection they arrived on;
* a call's outcome: :class:`ServerExited` (the server is gone or exited before replying, with
  its exit reason), :class:`CallTimeout` (no reply in time), :class:`Failure` (the server
  answered with an application failure: rinq's "failures vs errors").

Timeouts are the built-in :class:`TimeoutError`, as asyncio uses; :class:`CallTimeout` is one.
"""

from __future__ import annotations

from typing import Any

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
    "RegistrationError",
    "CallTimeout",
    "ServerExited",
    "SelfCallError",
    "Failure",
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


class RegistrationError(ReignError, ValueError):
    """A local name could not be registered or unregistered; the message says which rule failed."""


class CallTimeout(ReignError, TimeoutError):
    """``reign.call`` (or ``reign.stop``) got no answer within its timeout; a late reply is dropped."""


class ServerExited(ReignError):
    """The server of a call is gone, or exited before it replied; ``reason`` is its exit reason
    (``"noproc"`` when it was already gone, ``"noconnection"`` when its node was lost, a
    :class:`reign.Crash`, ...)."""

    def __init__(self, reason: Any, server: Any = None) -> None:
        super().__init__(f"server {server} exited: {reason!s:.300}" if server is not None else f"server exited: {reason!s:.300}")
        self.reason = reason
        self.server = server


class SelfCallError(ReignError):
    """A process called itself: the call could only deadlock, so it is refused at once."""


class Failure(ReignError):
    """An application failure: raised in a handler, it answers the call with itself (the
    server keeps running) and the caller gets it raised. ``type`` names the failure (a string
    the caller can match on), ``message`` is for humans, ``payload`` any encodable value.

    Crosses nodes (registered as ``reign.Failure``); compares by its three fields.
    """

    def __init__(self, type: str, message: str = "", payload: Any = None) -> None:
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        self.message = message
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Failure):
            return NotImplemented
        return (self.type, self.message, self.payload) == (other.type, other.message, other.payload)

    def __hash__(self) -> int:
        return hash((self.type, self.message))

    def __repr__(self) -> str:
        return f"Failure({self.type!r}, {self.message!r}, {self.payload!r})"
