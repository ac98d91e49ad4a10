"""Shared helpers for the sans-IO protocol: two PeerProtocol objects back to back in memory."""

from __future__ import annotations

from typing import Any

from reign._core.frames import DEFAULT_MAX_FRAME_BYTES
from reign._core.protocol import Established, PeerProtocol

CLUSTER = bytes(range(32))
INC_A = 0x019A3C5D7E8F0001
INC_B = 0x019A3C5D7E8F0002


def new_protocol(
    node: int = 1,
    peer: int | None = 2,
    *,
    incarnation: int | None = None,
    cluster: bytes = CLUSTER,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> PeerProtocol:
    """A fresh protocol for ``node`` expecting ``peer``; its HELLO is waiting in data_to_send()."""
    return PeerProtocol(
        local_node=node,
        local_incarnation=incarnation if incarnation is not None else (INC_A if node == 1 else INC_B),
        cluster_id=cluster,
        expected_peer=peer,
        max_frame_bytes=max_frame_bytes,
    )


def handshake(a: PeerProtocol, b: PeerProtocol) -> None:
    """Run the HELLO/ACCEPT exchange between ``a`` and ``b`` in memory; both end established."""
    hello_a, hello_b = a.data_to_send(), b.data_to_send()
    assert a.receive_data(hello_b) == [] and b.receive_data(hello_a) == []
    accept_a, accept_b = a.data_to_send(), b.data_to_send()
    assert a.receive_data(accept_b) == [Established(b.local_node, b.local_incarnation)]
    assert b.receive_data(accept_a) == [Established(a.local_node, a.local_incarnation)]
    assert a.state == b.state == "established"


def established_pair(**kwargs: Any) -> tuple[PeerProtocol, PeerProtocol]:
    """Nodes 1 and 2, handshake done, for exchanging established-state frames."""
    a, b = new_protocol(1, 2, **kwargs), new_protocol(2, 1, **kwargs)
    handshake(a, b)
    return a, b
