"""Messages the runtime itself sends to mailboxes (system messages).

Frozen, slotted dataclasses, registered with the codec under fixed wire names
(``reign.MailboxClosed``, ``reign.MultipleClaim``) so they can travel inside other values, and
with ``check_fields=True``: a received one whose fields are not of their annotated types (an
``id`` that is not a MailboxID) is a DecodeError, never delivered. A new library message
declares its checks the same way, in its annotations (``reason: Any`` is not checked).
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec.types import register_type
from .ids import MailboxID

__all__ = ["MailboxClosed", "MultipleClaim"]


@register_type(name="reign.MailboxClosed", check_fields=True)
@dataclass(frozen=True, slots=True)
class MailboxClosed:
    """Sent to a watcher when the mailbox ``id`` closes or its node is lost (Erlang ``DOWN``)."""

    id: MailboxID


@register_type(name="reign.MultipleClaim", check_fields=True)
@dataclass(frozen=True, slots=True)
class MultipleClaim:
    """Sent to every claimant of ``name`` when the name gains another claimant."""

    name: str
