"""Coverage-guided fuzzing of the receive path and the codec (atheris).

The property, as h11's fuzz harness states its own: for any bytes from a peer,

* ``_codec.decode`` returns a value or raises ``DecodeError``; nothing else;
* the node's receive path (``Inbound.receive`` over a ``PeerProtocol``, the code a connection
  runs) delivers values and reports events or raises ``ProtocolError`` (``DecodeError`` and
  ``HandshakeError`` are subclasses); nothing else; and feeding the same bytes whole or one
  byte at a time gives the same deliveries and events and the same error;
* with the structural pre-scan forced on, ``decode`` accepts and refuses the same inputs
  (except the scan's own memory-budget refusals).

atheris is not a dependency of reign. To run (Linux, CPython with a matching atheris wheel)::

    pip install atheris
    python fuzz/fuzz_wire.py                      # runs until stopped or a crash
    python fuzz/fuzz_wire.py -runs=200000         # any libFuzzer flag works
    python fuzz/fuzz_wire.py -max_len=4096 corpus_dir/

A crash prints the input and writes it to ``crash-<sha1>``; replay it with
``python fuzz/fuzz_wire.py crash-<sha1>``.
"""

from __future__ import annotations

import sys
from typing import Any

CLUSTER = bytes(range(32))


def _established_pair() -> tuple[Any, Any]:
    from reign._core.protocol import PeerProtocol

    a = PeerProtocol(local_node=1, local_incarnation=11, cluster_id=CLUSTER, expected_peer=2)
    b = PeerProtocol(local_node=2, local_incarnation=22, cluster_id=CLUSTER, expected_peer=1)
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())  # the ACCEPTs
    b.receive_data(a.data_to_send())
    return a, b


class _Collect:
    def __init__(self, into: list[Any]) -> None:
        self.deliver = into.append


def _feed(protocol: Any, chunks: list[bytes]) -> tuple[list[Any], str | None]:
    """The node's receive path (``Inbound.receive``) fed ``chunks``: what reaches mailbox
    serial 5 and every other event, in order, and the error that ended it."""
    from reign._core.inbound import Inbound
    from reign._errors import ProtocolError

    events: list[Any] = []
    inbound = Inbound(incarnation=22, lookup={5: _Collect(events)}.get,
                      make_address=lambda mid: ("address", mid))
    try:
        for chunk in chunks:
            inbound.receive(protocol, chunk, events.append, events.append)
    except ProtocolError as exc:
        return events, f"{type(exc).__name__}: {exc}"
    return events, None


def _decode(data: bytes) -> tuple[str, Any]:
    from reign._core import codec as _codec
    from reign._errors import DecodeError

    try:
        return "ok", _codec.decode(data, lambda mid: ("address", mid))
    except DecodeError as exc:
        return "error", str(exc)


def test_one_input(data: bytes) -> None:
    from reign._core.codec import decoder as _decoder
    from reign._core.protocol import PeerProtocol

    if not data:
        return
    mode, rest = data[0], data[1:]

    # 1. the codec, both decode paths
    plain = _decode(rest)
    saved = _decoder.SCAN_THRESHOLD
    _decoder.SCAN_THRESHOLD = -1
    try:
        scanned = _decode(rest)
    finally:
        _decoder.SCAN_THRESHOLD = saved
    if not (scanned[0] == "error" and "more than" in scanned[1]):
        assert plain[0] == scanned[0], (plain, scanned)

    # 2. the protocol and the receive path, in the handshake (mode odd) or after it, whole vs byte by byte
    if mode & 1:
        whole = PeerProtocol(local_node=2, local_incarnation=22, cluster_id=CLUSTER, expected_peer=1)
        bytewise = PeerProtocol(local_node=2, local_incarnation=22, cluster_id=CLUSTER, expected_peer=1)
    else:
        whole, bytewise = _established_pair()[1], _established_pair()[1]
    events_whole, error_whole = _feed(whole, [rest])
    events_bytewise, error_bytewise = _feed(bytewise, [rest[i : i + 1] for i in range(len(rest))])
    assert error_whole == error_bytewise, (error_whole, error_bytewise)
    if error_whole is None:
        assert events_whole == events_bytewise
    else:
        assert events_bytewise[: len(events_whole)] == events_whole


def main() -> None:
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris")
    with atheris.instrument_imports():
        import reign._core.codec
        import reign._core.inbound
        import reign._core.protocol  # noqa: F401
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
