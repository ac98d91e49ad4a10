"""reign: Erlang-style mailboxes, addresses and TLS clustering for asyncio.

Processes are asyncio tasks; a :class:`Mailbox` is a process's message queue and its
:class:`Address` is the PID-like handle that works the same anywhere in the cluster. The API
is documented in ``docs/api.md``; everything public is importable from here.

The names below are loaded on first use (PEP 562), so importing the sans-IO core
(``reign._core``) does not load asyncio, ssl or the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Address": "reign._core.address",
    "call": "reign._otp.gen_server",
    "Caller": "reign._otp.gen_server",
    "CallTimeout": "reign._errors",
    "CantGloballyRegisterError": "reign._errors",
    "cast": "reign._otp.gen_server",
    "ChildSpec": "reign._otp.supervisor",
    "ClusterSpec": "reign._config.spec",
    "ClusterSpecError": "reign._errors",
    "Crash": "reign._core.messages",
    "create_from_spec": "reign._runtime.node",
    "create_from_spec_file": "reign._runtime.node",
    "DecodeError": "reign._errors",
    "Empty": "reign._errors",
    "EncodeError": "reign._errors",
    "Exit": "reign._core.messages",
    "exit": "reign._runtime.process",
    "Failure": "reign._errors",
    "GenServer": "reign._otp.gen_server",
    "HandshakeError": "reign._errors",
    "IllegalAddressFormatError": "reign._errors",
    "Mailbox": "reign._runtime.mailbox",
    "MailboxClosed": "reign._core.messages",
    "MailboxClosedError": "reign._errors",
    "MailboxID": "reign._core.ids",
    "MultipleClaim": "reign._core.messages",
    "Names": "reign._runtime.names",
    "no_clustering": "reign._runtime.node",
    "Node": "reign._runtime.node",
    "NodeSpec": "reign._config.spec",
    "NodeStatistics": "reign._runtime.node",
    "NOREPLY": "reign._otp.gen_server",
    "PeerStatistics": "reign._runtime.peer",
    "ProtocolError": "reign._errors",
    "register_type": "reign._core.codec.types",
    "RegistrationError": "reign._errors",
    "ReignError": "reign._errors",
    "run": "reign._runtime.node",
    "SelfCallError": "reign._errors",
    "send_after": "reign._otp.timers",
    "ServerExited": "reign._errors",
    "stop": "reign._otp.gen_server",
    "Supervisor": "reign._otp.supervisor",
    "Timer": "reign._otp.timers",
}

__all__ = [
    "Address",
    "call",
    "Caller",
    "CallTimeout",
    "CantGloballyRegisterError",
    "cast",
    "ChildSpec",
    "ClusterSpec",
    "ClusterSpecError",
    "Crash",
    "create_from_spec",
    "create_from_spec_file",
    "DecodeError",
    "Empty",
    "EncodeError",
    "Exit",
    "exit",
    "Failure",
    "GenServer",
    "HandshakeError",
    "IllegalAddressFormatError",
    "Mailbox",
    "MailboxClosed",
    "MailboxClosedError",
    "MailboxID",
    "MultipleClaim",
    "Names",
    "no_clustering",
    "Node",
    "NodeSpec",
    "NodeStatistics",
    "NOREPLY",
    "PeerStatistics",
    "ProtocolError",
    "register_type",
    "RegistrationError",
    "ReignError",
    "run",
    "SelfCallError",
    "send_after",
    "ServerExited",
    "stop",
    "Supervisor",
    "Timer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reign' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from ._config.spec import (
        ClusterSpec as ClusterSpec,
    )
    from ._config.spec import (
        NodeSpec as NodeSpec,
    )
    from ._core.address import (
        Address as Address,
    )
    from ._core.codec.types import (
        register_type as register_type,
    )
    from ._core.ids import (
        MailboxID as MailboxID,
    )
    from ._core.messages import (
        Crash as Crash,
    )
    from ._core.messages import (
        Exit as Exit,
    )
    from ._core.messages import (
        MailboxClosed as MailboxClosed,
    )
    from ._core.messages import (
        MultipleClaim as MultipleClaim,
    )
    from ._errors import (
        CallTimeout as CallTimeout,
    )
    from ._errors import (
        CantGloballyRegisterError as CantGloballyRegisterError,
    )
    from ._errors import (
        ClusterSpecError as ClusterSpecError,
    )
    from ._errors import (
        DecodeError as DecodeError,
    )
    from ._errors import (
        Empty as Empty,
    )
    from ._errors import (
        EncodeError as EncodeError,
    )
    from ._errors import (
        Failure as Failure,
    )
    from ._errors import (
        HandshakeError as HandshakeError,
    )
    from ._errors import (
        IllegalAddressFormatError as IllegalAddressFormatError,
    )
    from ._errors import (
        MailboxClosedError as MailboxClosedError,
    )
    from ._errors import (
        ProtocolError as ProtocolError,
    )
    from ._errors import (
        RegistrationError as RegistrationError,
    )
    from ._errors import (
        ReignError as ReignError,
    )
    from ._errors import (
        SelfCallError as SelfCallError,
    )
    from ._errors import (
        ServerExited as ServerExited,
    )
    from ._otp.gen_server import (
        NOREPLY as NOREPLY,
    )
    from ._otp.gen_server import (
        Caller as Caller,
    )
    from ._otp.gen_server import (
        GenServer as GenServer,
    )
    from ._otp.gen_server import (
        call as call,
    )
    from ._otp.gen_server import (
        cast as cast,
    )
    from ._otp.gen_server import (
        stop as stop,
    )
    from ._otp.supervisor import (
        ChildSpec as ChildSpec,
    )
    from ._otp.supervisor import (
        Supervisor as Supervisor,
    )
    from ._otp.timers import (
        Timer as Timer,
    )
    from ._otp.timers import (
        send_after as send_after,
    )
    from ._runtime.mailbox import (
        Mailbox as Mailbox,
    )
    from ._runtime.names import (
        Names as Names,
    )
    from ._runtime.node import (
        Node as Node,
    )
    from ._runtime.node import (
        NodeStatistics as NodeStatistics,
    )
    from ._runtime.node import (
        create_from_spec as create_from_spec,
    )
    from ._runtime.node import (
        create_from_spec_file as create_from_spec_file,
    )
    from ._runtime.node import (
        no_clustering as no_clustering,
    )
    from ._runtime.node import (
        run as run,
    )
    from ._runtime.peer import (
        PeerStatistics as PeerStatistics,
    )
    from ._runtime.process import (
        exit as exit,
    )
