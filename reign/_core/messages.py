"""Messages the runtime itself sends to mailboxes (system messages).

Frozen, slotted dataclasses, registered with the codec under fixed wire names
(``reign.MailboxClosed``, ``reign.MultipleClaim``) so they can travel inside other values.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec.types import register_type
from .ids import MailboxID

__all__ = ["MailboxClosed", "MultipleClaim"]


@register_type(name="reign.MailboxClosed")
@dataclass(frozen=True, slots=True)
class MailboxClosed:
    """Sent to a watcher when the mailbox ``id`` closes or its node is lost (Erlang ``DOWN``)."""

    id: MailboxID


@register_type(name="reign.MultipleClaim")
@dataclass(frozen=True, slots=True)
class MultipleClaim:
    """Sent to every claimant of ``name`` when the name gains another claimant."""

    name: str
