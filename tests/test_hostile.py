"""Hostile peers and hostile bytes, over real TLS connections to a real node.

Peers that must never become a node (each refused and logged with the peer and the reason):
an expired certificate from the real CA (as a client and as a server), a client offering only
TLS 1.2 or older, 50 clients that open TCP and never finish the TLS handshake, and clients that
finish TLS but never say HELLO. Meanwhile a legitimate node still connects promptly.
(Another CA, no client certificate and node 3's certificate presented as node 2 are in
``test_cluster.py``.)

An authenticated peer (node 1's real certificate, a correct HELLO) that sends crafted frames:
CBOR nested 100k deep, tags outside the allow-list, duplicate keys, indefinite lengths,
trailing bytes, 1 MiB of empty containers, 4 MiB of small records (over the item cap), a
library message with a field of the wrong type, junk CONTROL frames, a 2**31-byte frame header.
Each closes only that connection (``peer.protocol_error``), within a time and a memory budget
(tracemalloc, so the node runs in this process), while a third node in its own process keeps
streaming to the node without a gap.

And a fuzz property of the receive path as the connector runs it (frames, then payload
decoding): it yields values or a ProtocolError/DecodeError, and whole or byte by byte or in
random chunks gives the same result. (``test_codec.py`` and ``test_protocol.py`` fuzz each layer
alone.)
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import reign
from reign._config import certs as _certs
from reign._config.tls import client_context
from reign._core import codec as _codec
from reign._core import frames as _wire
from reign._core.codec import decoder as _decoder
from reign._core.inbound import Inbound
from reign._core.protocol import Established, PeerProtocol
from reign._errors import DecodeError, ProtocolError
from reign._runtime import cluster as _cluster
from reign._runtime import connection as _connection
from reign._runtime import log as _log

from cluster_util import CA, listen_address, make_cluster, wait_connected, wait_for, write_key, write_spec
from fault_util import Fleet
from wire_util import handshake

#: Seconds a hostile connection may live after its last byte was sent.
CLOSE_WITHIN = 2.0
#: Bytes of Python memory (tracemalloc peak over the baseline) one hostile frame may cost.
MEMORY_BUDGET = 32 * 1024 * 1024
#: A legitimate node must be up within this many seconds while the stalled clients hang on.
PROMPT = 3.0
#: Stalled clients (TCP only) in the handshake test.
STALLED = 50


def expired_certificate(ca: CA, node_id: int) -> tuple[bytes, bytes]:
    """A certificate for ``node_id``, signed by the real CA, that expired yesterday."""
    cert_pem, key_pem = _certs.create_node_certificate(ca.cert, ca.key, node_id)
    good = x509.load_pem_x509_certificate(cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key, None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(good.subject)
        .issuer_name(good.issuer)
        .public_key(good.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
    )
    for ext in good.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _events(logs: list[dict[str, Any]], event: str, node: int | None = None) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event and (node is None or e.get("node") == node)]


async def _tls_client(port: int, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx)


async def _refused(port: int, ctx: ssl.SSLContext) -> None:
    """Connect with ``ctx``: the handshake fails, or (TLS 1.3) the first read ends the stream."""
    try:
        reader, writer = await asyncio.wait_for(_tls_client(port, ctx), 10)
    except (ssl.SSLError, ConnectionError):
        return
    try:
        data = await asyncio.wait_for(reader.read(100), 10)
        assert data == b"", f"a refused client read {data!r}"
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        writer.close()


# ------------------------------------------------------------------------- hostile peers


@pytest.mark.slow
async def test_expired_certificates_are_refused_both_ways(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    for node_id in (1, 2, 3):
        ca.issue(node_id)
    spec = write_spec(tmp_path, [1, 2, 3], net_ticktime=4)
    for node_id in (1, 3):  # nodes 1 (dials node 2) and 3 (dialled by node 2) are expired
        cert, key = expired_certificate(ca, node_id)
        (tmp_path / f"reign_node.{node_id}.crt").write_bytes(cert)
        write_key(tmp_path / f"reign_node.{node_id}.key", key)
    data = reign.ClusterSpec.load(spec)
    for node_id in (1, 3):  # refused locally at start-up, naming the dates...
        with pytest.raises(reign.ClusterSpecError, match=r"node_cert_path .*certificate expired"):
            reign.create_from_spec(data, node_id)
    # ...so forced past the local check, as a peer that skips it would be.
    n1, n3 = (reign.Node(i, data, credentials=data.load_credentials(i, verify=False)) for i in (1, 3))
    with capture_logs() as logs:
        async with reign.create_from_spec_file(spec, 2) as n2:
            port = listen_address(n2)[1]
            async with n1, n3:
                await asyncio.sleep(1.5)
                peers = n2.statistics().peers
                assert peers[1].connects == peers[3].connects == 0
            # A bare client with the expired certificate of node 1.
            cert, key = (tmp_path / "reign_node.1.crt").read_bytes(), (tmp_path / "reign_node.1.key").read_bytes()
            await _refused(port, client_context(cert, key, ca.cert))
            await asyncio.sleep(0.1)
            assert n2.statistics().peers[1].connects == 0
    inbound = _events(logs, "node.tls.rejected", node=2)
    assert len(inbound) >= 2, logs  # node 1's dials and the bare client
    assert all(e["remote"].startswith("127.0.0.1:") and e["reason"] for e in inbound)
    print("\nexpired client certificate:", {e["reason"] for e in inbound})
    outbound = [e for e in _events(logs, "peer.dial.failed", node=2) if e["peer"] == 3]
    assert outbound and outbound[0]["reason"], logs
    print("expired server certificate:", outbound[0]["reason"])
    reasons = " ".join(e["reason"] for e in inbound + outbound).lower()
    assert "expired" in reasons, f"the logged reasons do not say the certificate expired: {reasons}"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_1", "TLSv1"])
async def test_tls_1_2_and_older_are_refused(tmp_path: Path, version: str) -> None:
    spec_path = make_cluster(tmp_path, [1, 2])
    spec = reign.ClusterSpec.load(spec_path)
    cert, key, ca = spec.load_credentials(1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.decode())
    (tmp_path / "client.crt").write_bytes(cert)
    write_key(tmp_path / "client.key", key)
    ctx.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    if version != "TLSv1_2":
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer the old versions at all
    try:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = getattr(ssl.TLSVersion, version)
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot offer {version}: {exc}")
    with capture_logs() as logs:
        async with reign.create_from_spec_file(spec_path, 2) as n2:
            port = listen_address(n2)[1]
            try:
                reader, writer = await asyncio.wait_for(_tls_client(port, ctx), 10)
            except ssl.SSLError as exc:
                if "no protocols available" in str(exc).lower():
                    pytest.skip(f"this OpenSSL cannot offer {version}: {exc}")
                refused_by = repr(exc)
            except ConnectionError as exc:  # node 2 dropped the connection on the ClientHello
                refused_by = repr(exc)
            else:
                writer.close()
                pytest.fail(f"node 2 completed a {writer.get_extra_info('ssl_object').version()} handshake")
            await wait_for(lambda: bool(_events(logs, "node.tls.rejected")), timeout=5)
            assert n2.statistics().peers[1].connects == 0
    rejected = _events(logs, "node.tls.rejected")
    assert rejected[0]["remote"].startswith("127.0.0.1:") and rejected[0]["reason"]
    print(f"\n{version}: client sees {refused_by!r}; node logs {rejected[0]['reason']!r}")


@pytest.mark.slow
async def test_stalled_handshakes_are_each_rejected_while_a_real_node_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same code path, on a shorter clock: 10 s handshake/HELLO timeouts -> 3 s.
    monkeypatch.setattr(_cluster, "TLS_HANDSHAKE_TIMEOUT", 3.0)
    monkeypatch.setattr(_connection, "HELLO_TIMEOUT", 3.0)
    # Each client's rejection is checked below: lift the rate limit (test_overload.py tests it).
    monkeypatch.setattr(_log, "LOG_BURST", 10 * STALLED)
    spec_path = make_cluster(tmp_path, [1, 2, 3], net_ticktime=4)
    spec = reign.ClusterSpec.load(spec_path)
    cert, key, ca = spec.load_credentials(1)
    stalled: list[socket.socket] = []
    silent: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    with capture_logs() as logs:
        async with reign.create_from_spec_file(spec_path, 2) as n2:
            port = listen_address(n2)[1]
            hello = bytes.fromhex("16030100")  # the first bytes of a ClientHello record, no more
            t0 = time.monotonic()
            for i in range(STALLED):
                s = socket.create_connection(("127.0.0.1", port))
                if i % 2:
                    s.sendall(hello)
                stalled.append(s)
            ports = {s.getsockname()[1] for s in stalled}
            # Five authenticated clients (node 1's real certificate) that never say HELLO.
            for _ in range(5):
                silent.append(await _tls_client(port, client_context(cert, key, ca)))
            # A real node connects promptly all the same.
            async with reign.create_from_spec_file(spec_path, 3) as n3:
                await wait_connected([n2, n3], timeout=PROMPT)
                prompt = time.monotonic() - t0
                a3, m3 = n3.new_mailbox()
                n2.address(str(a3)).send("still serving")
                assert await m3.receive(timeout=PROMPT) == "still serving"
                # ...and every stalled client is cut off, each logged with its address.
                await wait_for(lambda: len(_events(logs, "node.tls.rejected")) >= STALLED, timeout=10)
                await wait_for(lambda: len(_events(logs, "peer.handshake.rejected")) >= 5, timeout=10)
                for s in stalled:  # closed by node 2: EOF or a reset, never a hang
                    s.settimeout(5)
                    try:
                        assert s.recv(100) == b""
                    except ConnectionResetError:
                        pass
                for reader, _ in silent:  # node 2's HELLO, then EOF
                    await asyncio.wait_for(_read_to_eof(reader), 5)
                assert n2.statistics().peers[1].connects == 0  # node 1 never came up
                assert n2.statistics().peers[3].state == "up"
    for s in stalled:
        s.close()
    for _, writer in silent:
        writer.close()

    def port_of(event: dict[str, Any]) -> int:
        return int(event["remote"].rsplit(":", 1)[1])

    # Each stalled client: exactly one rejection, as a TLS failure that says it timed out.
    per_client = {p: [e for e in logs if "remote" in e and port_of(e) == p] for p in ports}
    wrong = {p: [(e["event"], e.get("peer"), e["reason"]) for e in events]
             for p, events in per_client.items()
             if [e["event"] for e in events] != ["node.tls.rejected"]}
    assert not wrong, f"{len(wrong)} stalled clients not logged once as node.tls.rejected: " \
                      f"{list(wrong.items())[:3]}"
    for events in per_client.values():
        reason = events[0]["reason"]
        assert "handshake" in reason and ("timed out" in reason or "longer than" in reason), reason
    # Each authenticated client that never said HELLO: one rejection naming node 1.
    no_hello = _events(logs, "peer.handshake.rejected")
    assert len(no_hello) == 5 and all(e["peer"] == 1 and "HELLO" in e["reason"] for e in no_hello), no_hello
    print(f"\nnode 3 up {prompt:.2f} s after {STALLED} stalled handshakes began")


# ------------------------------------------------------------------------- hostile bytes

_DEEP = b"\x81" * 100_000 + b"\x00"
_MID = reign.MailboxID(1, 11, 7)
_MIB = 1 << 20

#: Crafted frames from an authenticated peer: (frame kind, payload). Each must close the connection.
HOSTILE: dict[str, tuple[str, bytes]] = {
    "nesting 100k deep": ("message", _DEEP),
    "tag 2 (bignum)": ("message", b"\xc2\x49" + b"\x01" * 9),
    "tag 3 (negative bignum)": ("message", b"\xc3\x41\x01"),
    "tag 28 (shareable)": ("message", b"\xd8\x1c\x81\x01"),
    "tag 29 (shared reference)": ("message", b"\x82\xd8\x1c\x80\xd8\x1d\x00"),
    "tag 35 (regex)": ("message", b"\xd8\x23\x64(a*)"),
    "tag 36 (MIME)": ("message", b"\xd8\x24\x78\x1eContent-Type: text/plain\r\n\r\nhi"),
    "tag 55799 around a tag 1 date": ("message", b"\xd9\xd9\xf7\xc1\x1a\x51\x4b\x67\xb0"),
    "duplicate map keys": ("message", b"\xa2\x61a\x01\x61a\x02"),
    "indefinite array": ("message", b"\x9f\x01\x02\xff"),
    "indefinite map": ("message", b"\xbf\x61a\x01\xff"),
    "indefinite byte string": ("message", b"\x5f\x41a\x41b\xff"),
    "trailing bytes": ("message", b"\x01\x02"),
    "1 MiB of 0x80 (one empty array, then trailing bytes)": ("message", b"\x80" * _MIB),
    "1 MiB of empty arrays in one array": ("message", b"\x9a" + struct.pack(">I", _MIB) + b"\x80" * _MIB),
    "1 MiB of empty maps in one array": ("message", b"\x9a" + struct.pack(">I", _MIB) + b"\xa0" * _MIB),
    "4 MiB of [{'ab': 0}, ...] (over MAX_ITEMS)": (
        "message", b"\x9a" + struct.pack(">I", 4 * _MIB // 5 - 1) + b"\xa1\x62ab\x00" * (4 * _MIB // 5 - 1)),
    "a forwarded MailboxClosed(id='abc')": (
        "message", _codec.encode(("fwd", reign.MailboxClosed(_MID))).replace(_codec.encode(_MID), _codec.encode("abc"))),
    "CONTROL: junk bytes": ("control", b"\xff\xfe\x00junk\x1c\x1d"),
    "CONTROL: nesting 100k deep": ("control", _DEEP),
    "CONTROL: 1 MiB of empty arrays": ("control", b"\x9a" + struct.pack(">I", _MIB) + b"\x80" * _MIB),
    "frame header announcing 2**31 bytes": ("raw", struct.pack(">IB", 2**31, _wire.FrameType.MESSAGE)),
}


@asynccontextmanager
async def _authenticated(spec: reign.ClusterSpec, port: int, incarnation: int) -> AsyncIterator[Any]:
    """A TLS connection to node 2 with node 1's real certificate, HELLO/ACCEPT done."""
    cert, key, ca = spec.load_credentials(1)
    reader, writer = await _tls_client(port, client_context(cert, key, ca))
    wire = PeerProtocol(local_node=1, local_incarnation=incarnation,
                        cluster_id=_certs.cluster_identity(ca), expected_peer=2,
                        max_frame_bytes=spec.max_message_bytes + _wire.MESSAGE_OVERHEAD)
    writer.write(wire.data_to_send())
    events: list[Any] = []
    while Established not in map(type, events):  # node 2's HELLO and ACCEPT
        events += wire.receive_data(await asyncio.wait_for(reader.read(65536), 10))
        writer.write(wire.data_to_send())
    try:
        yield reader, writer, wire
    finally:
        writer.close()


async def _read_to_eof(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(65536):
            pass  # whatever node 2 had queued (registry snapshot), then EOF
    except ConnectionError:
        pass


@pytest.mark.slow
async def test_hostile_frames_close_only_that_connection_within_budget(tmp_path: Path) -> None:
    spec_path = make_cluster(tmp_path, [1, 2, 3], net_ticktime=4, max_message_bytes=4 * _MIB)
    spec = reign.ClusterSpec.load(spec_path)
    fleet = Fleet(tmp_path, spec_path)
    n2 = reign.create_from_spec_file(spec_path, 2)
    status: list[tuple[int, bool]] = []
    n2.add_connection_status_callback(lambda peer, up: status.append((peer, up)))
    inbox, box = n2.new_mailbox()
    received: list[int] = []
    received_pongs: list[str] = []
    problems: list[str] = []

    async def check_stream() -> None:  # node 3's sequence-numbered stream to node 2
        async for msg in box:
            if type(msg) is tuple and msg[0] == "seq":
                seq = msg[4]
                if seq != len(received):
                    problems.append(f"seq {seq} after {len(received)} messages")
                received.append(seq)
            elif type(msg) is tuple and msg[0] == "pong":
                received_pongs.append(msg[2])

    measured: dict[str, tuple[float, int]] = {}
    async with n2:
        n2.names.register("inbox.2", inbox)
        checker = asyncio.ensure_future(check_stream())
        try:
            n3 = await fleet.start(3)
            await wait_for(lambda: n2.statistics().peers[3].state == "up", timeout=20)
            n3.send("stream", peers=[2], rate=200)
            await wait_for(lambda: len(received) > 50, timeout=10)
            port = listen_address(n2)[1]
            target = inbox.id
            tracemalloc.start()
            try:
                for i, (name, (kind, payload)) in enumerate(HOSTILE.items()):
                    async with _authenticated(spec, port, incarnation=100 + i) as (reader, writer, wire):
                        await wait_for(lambda: n2.statistics().peers[1].state == "up", timeout=10)
                        if kind == "message":
                            frame = wire.message(target, payload)
                        elif kind == "control":
                            frame = wire.control(payload)
                        else:
                            frame = payload
                        with capture_logs() as logs:
                            baseline = tracemalloc.get_traced_memory()[0]
                            tracemalloc.reset_peak()  # the peak from here includes our own frame
                            writer.write(frame)
                            await writer.drain()
                            sent_at = time.monotonic()
                            await asyncio.wait_for(_read_to_eof(reader), 10)
                            elapsed = time.monotonic() - sent_at
                            peak = tracemalloc.get_traced_memory()[1] - baseline
                            await wait_for(lambda: n2.statistics().peers[1].state == "down", timeout=5)
                        errors = _events(logs, "peer.protocol_error")
                        assert errors and errors[0]["peer"] == 1, (name, logs)
                        measured[name] = (elapsed, peak)
                        assert elapsed < CLOSE_WITHIN, f"{name}: closed after {elapsed:.2f} s"
                        assert peak < MEMORY_BUDGET, f"{name}: {peak / _MIB:.1f} MiB"
                    # Node 3 is still served: a round trip after every hostile connection.
                    n2.address(n3.inbox).send(("ping", inbox, name))
                    await wait_for(lambda name=name: name in received_pongs, timeout=5)
            finally:
                tracemalloc.stop()
            count = len(received)
            await wait_for(lambda: len(received) > count + 50, timeout=10)
            assert not problems, problems
            assert (3, False) not in status, status
            assert all(peer == 1 for peer, up in status if not up)
        finally:
            checker.cancel()
            await fleet.close()
    width = max(map(len, measured))
    print()
    for name, (elapsed, peak) in measured.items():
        print(f"{name:<{width}}  closed in {elapsed * 1000:6.1f} ms, peak {peak / _MIB:5.2f} MiB")


# ------------------------------------------------------------------------- fuzz


_CLUSTER = bytes(range(32))
_TAGS = [0, 1, 2, 3, 25, 28, 29, 35, 36, 256, 258, 55799, 51200, 51201, 51202, 51203]


def _head(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes([major << 5 | arg])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * size):
            return bytes([major << 5 | info]) + arg.to_bytes(size, "big")
    raise ValueError(arg)


_leaf = st.one_of(
    st.integers(-(2**64), 2**64 - 1).map(lambda n: _codec.encode(n)),
    st.binary(max_size=8).map(lambda b: _head(2, len(b)) + b),
    st.text(max_size=8).map(lambda s: _head(3, len(s.encode())) + s.encode()),
    st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf0", b"\xf8\x20", b"\xfb" + b"\x00" * 8,
                     b"\x5f\x41a\xff", b"\x7f\x61a\xff", b"\xff", b"\x1c", b"\x18", b""]),
)


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    items = st.lists(children, max_size=4)
    return st.one_of(
        items.map(lambda xs: _head(4, len(xs)) + b"".join(xs)),  # array
        items.map(lambda xs: b"\x9f" + b"".join(xs) + b"\xff"),  # indefinite array
        st.lists(st.tuples(children, children), max_size=3).map(
            lambda kv: _head(5, len(kv)) + b"".join(k + v for k, v in kv)),  # map (keys may repeat)
        st.tuples(st.sampled_from(_TAGS), children).map(lambda tv: _head(6, tv[0]) + tv[1]),
        st.tuples(st.integers(0, 3), items).map(  # a lying count
            lambda c: _head(4, len(c[1]) + c[0]) + b"".join(c[1])),
    )


#: Hostile CBOR built from pieces: every tag cbor2 knows, wrong counts, indefinite lengths,
#: duplicate keys, simple values, breaks in the wrong place; sometimes with bytes after it.
hostile_cbor = st.tuples(
    st.recursive(_leaf, _containers, max_leaves=12),
    st.sampled_from([b"", b"", b"", b"\x00", b"\xff"]),
).map(lambda parts: parts[0] + parts[1])


def _pair() -> tuple[PeerProtocol, PeerProtocol]:
    a = PeerProtocol(local_node=1, local_incarnation=11, cluster_id=_CLUSTER, expected_peer=2)
    b = PeerProtocol(local_node=2, local_incarnation=22, cluster_id=_CLUSTER, expected_peer=1)
    handshake(a, b)
    return a, b


class _Collect:
    """A mailbox as the receive path sees it, collecting what it is given."""

    def __init__(self, into: list[Any]) -> None:
        self.deliver = into.append


def _receive_path(chunks: list[bytes]) -> tuple[list[Any], str | None]:
    """The connector's receive path (``Inbound.receive``, the same code) fed bytes from an
    established peer: messages for mailbox serial 5, CONTROL payloads and other events, in order."""
    _, receiver = _pair()
    delivered: list[Any] = []
    inbound = Inbound(incarnation=22, lookup={5: _Collect(delivered)}.get,
                      make_address=lambda mid: ("address", mid))
    try:
        for chunk in chunks:
            inbound.receive(receiver, chunk, delivered.append, delivered.append)
    except ProtocolError as exc:  # DecodeError is a ProtocolError; anything else fails the test
        return delivered, f"{type(exc).__name__}"
    return delivered, None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["message", "control"]), hostile_cbor), min_size=1, max_size=5),
       st.randoms(use_true_random=False))
def test_fuzz_receive_path_whole_bytewise_and_chunked_agree(frames: list[tuple[str, bytes]], rnd: Any) -> None:
    sender, _ = _pair()
    target = reign.MailboxID(2, 22, 5)
    stream = b"".join(sender.message(target, p) if k == "message" else sender.control(p) for k, p in frames)
    whole = _receive_path([stream])
    bytewise = _receive_path([stream[i : i + 1] for i in range(len(stream))])
    cuts = sorted(rnd.sample(range(1, len(stream)), min(len(stream) - 1, rnd.randint(0, 6))))
    chunked = _receive_path([stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)])])
    assert whole[1] == bytewise[1] == chunked[1]
    # Decoding stops at the first bad payload whatever the chunking: the same values before it.
    assert _same(whole[0], bytewise[0]) and _same(whole[0], chunked[0])


def test_library_message_with_wrong_field_types_is_never_delivered() -> None:
    """Issue 13, item 9: a peer's ``MailboxClosed(id='abc')`` was delivered as is. Now it is a
    DecodeError (the connection is closed); what came before it was delivered, nothing after."""
    sender, _ = _pair()
    target = reign.MailboxID(2, 22, 5)
    notice = ("fwd", reign.MailboxClosed(_MID))  # forwarded inside a tuple, as applications do
    good = _codec.encode(notice)
    bad = good.replace(_codec.encode(_MID), _codec.encode("abc"))
    stream = b"".join(sender.message(target, p) for p in (good, bad, good))
    delivered, error = _receive_path([stream])
    assert error == "DecodeError"
    assert delivered == [notice]
    claim = _codec.encode(["claims", reign.MultipleClaim("chat")]).replace(_codec.encode("chat"), b"\x01")
    assert _receive_path([sender.control(claim)]) == ([], "DecodeError")


def _same(a: Any, b: Any) -> bool:
    """Equality that also holds for NaN and keeps types apart (1 vs True vs 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and _same(v, b[k]) for k, v in a.items())
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(hostile_cbor)
def test_fuzz_hostile_cbor_decodes_or_raises_decode_error_on_both_paths(data: bytes) -> None:
    """Structured hostile CBOR (not just random bytes): DecodeError or a value, and the
    pre-scan used for large payloads agrees with cbor2 (except its own memory budget)."""
    outcomes = []
    for threshold in (_codec.SCAN_THRESHOLD, -1):
        saved, _decoder.SCAN_THRESHOLD = _decoder.SCAN_THRESHOLD, threshold
        try:
            outcomes.append(("ok", _codec.decode(data, lambda mid: mid)))
        except DecodeError as exc:
            outcomes.append(("error", str(exc)))
        finally:
            _decoder.SCAN_THRESHOLD = saved
    (plain, plain_value), (scanned, scanned_value) = outcomes
    if scanned == "error" and "more than" in str(scanned_value):
        return  # the memory estimate is the scan's own rule
    assert plain == scanned, (data.hex(), outcomes)
    if plain == "ok":
        assert _same(plain_value, scanned_value)
