"""reign: Erlang-style mailboxes, addresses and TLS clustering for asyncio.

Processes are asyncio tasks; a :class:`Mailbox` is a process's message queue and its
:class:`Address` is the PID-like handle that works the same anywhere in the cluster.
The public contract is documented in the project's README and API notes.
"""

from ._address import Address
from ._cluster import PeerStatistics
from ._codec import register_type
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
from ._names import Names
from ._node import Node, NodeStatistics, create_from_spec, create_from_spec_file, no_clustering, run
from ._spec import ClusterSpec, NodeSpec

__all__ = [
    "Address",
    "CantGloballyRegisterError",
    "ClusterSpec",
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
    "Names",
    "Node",
    "NodeSpec",
    "NodeStatistics",
    "PeerStatistics",
    "ProtocolError",
    "ReignError",
    "create_from_spec",
    "create_from_spec_file",
    "no_clustering",
    "register_type",
    "run",
]
