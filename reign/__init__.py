"""reign: Erlang-style mailboxes, addresses and TLS clustering for asyncio.

Processes are asyncio tasks; a :class:`Mailbox` is a process's message queue and its
:class:`Address` is the PID-like handle that works the same anywhere in the cluster.
The public contract is documented in the project's README and API notes.
"""

from ._address import Address
from ._errors import (
    CantGloballyRegisterError,
    ClusterSpecError,
    DecodeError,
    Empty,
    EncodeError,
    HandshakeError,
    IllegalAddressFormatError,
    MailboxClosedError,
    ProtocolError,
    ReignError,
)
from ._ids import MailboxID
from ._mailbox import Mailbox
from ._messages import MailboxClosed, MultipleClaim
from ._node import Node, no_clustering, run

__all__ = [
    "Address",
    "CantGloballyRegisterError",
    "ClusterSpecError",
    "DecodeError",
    "Empty",
    "EncodeError",
    "HandshakeError",
    "IllegalAddressFormatError",
    "Mailbox",
    "MailboxClosed",
    "MailboxClosedError",
    "MailboxID",
    "MultipleClaim",
    "Node",
    "ProtocolError",
    "ReignError",
    "no_clustering",
    "run",
]
