"""reign._certs: issuing, identity and a real TLS 1.3 handshake on loopback with stdlib ssl."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reign._config.certs import (
    CLOCK_SKEW,
    ValidityError,
    check_ca_credentials,
    check_node_credentials,
    check_validity,
    cluster_identity,
    create_ca,
    create_node_certificate,
    key_matches_certificate,
    node_id_from_certificate,
)
from reign._errors import HandshakeError
from reign.testing import write_key

HANDSHAKE_TIMEOUT = 5.0


@dataclass(frozen=True)
class CA:
    cert: bytes
    key: bytes


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA(*create_ca(organization="test org", days=30))


@pytest.fixture(scope="module")
def other_ca() -> CA:
    return CA(*create_ca(organization="test org", days=30))


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _issue(
    ca: CA,
    *,
    common_names: Sequence[str] = (),
    uris: Sequence[str] = (),
    with_san: bool = True,
) -> bytes:
    """A hand-made leaf certificate signed by ``ca``, for identity edge cases."""
    ca_cert = _load(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if with_san:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names.append(x509.DNSName("localhost"))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- the CA


def test_ca_is_a_self_signed_p256_ca(ca: CA) -> None:
    cert = _load(ca.cert)
    cert.verify_directly_issued_by(cert)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "reign cluster CA"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "test org"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert key_matches_certificate(ca.cert, ca.key)
    check_ca_credentials(ca.cert, ca.key)


def test_ca_validity_starts_in_the_past_and_lasts_the_days_asked() -> None:
    cert = _load(create_ca(days=10)[0])
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now - datetime.timedelta(minutes=4)
    lifetime = cert.not_valid_after_utc - now
    assert datetime.timedelta(days=9, hours=23) < lifetime <= datetime.timedelta(days=10)


def test_every_ca_is_a_new_cluster(ca: CA, other_ca: CA) -> None:
    assert ca.key != other_ca.key
    assert cluster_identity(ca.cert) != cluster_identity(other_ca.cert)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"days": 0},
        {"days": -1},
        {"days": 1.5},
        {"days": True},
        {"days": 10**6},
        {"organization": ""},
        {"organization": "   "},
        {"organization": "x" * 65},
        {"organization": "bad\nname"},
    ],
)
def test_create_ca_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        create_ca(**kwargs)  # type: ignore[arg-type]


def test_cluster_identity_is_sha256_of_der_and_ignores_pem_layout(ca: CA) -> None:
    der = _load(ca.cert).public_bytes(serialization.Encoding.DER)
    assert cluster_identity(ca.cert) == hashlib.sha256(der).digest()
    assert cluster_identity(b"\n  " + ca.cert.replace(b"\n", b"\r\n")) == cluster_identity(ca.cert)
    assert cluster_identity(der) == cluster_identity(ca.cert)
    with pytest.raises(ValueError):
        cluster_identity(b"not a certificate")


# --------------------------------------------------------------------------- node certificates


@pytest.mark.parametrize("node_id", [0, 1, 2, 17, 254, 255])
def test_node_certificate_verifies_and_names_its_node(ca: CA, node_id: int) -> None:
    cert_pem, key_pem = create_node_certificate(ca.cert, ca.key, node_id, days=5)
    cert = _load(cert_pem)
    cert.verify_directly_issued_by(_load(ca.cert))
    assert node_id_from_certificate(cert_pem) == node_id
    assert node_id_from_certificate(cert) == node_id
    assert node_id_from_certificate(cert.public_bytes(serialization.Encoding.DER)) == node_id
    assert check_node_credentials(cert_pem, key_pem, ca.cert) == node_id
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == str(node_id)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"reign://node/{node_id}"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]


def test_node_certificate_extensions(ca: CA) -> None:
    cert = _load(create_node_certificate(ca.cert, ca.key, 3)[0])
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = _load(ca.cert).extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    # The organization is copied from the CA when not given.
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "test org"
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now - datetime.timedelta(minutes=4)


def test_node_certificate_never_outlives_its_ca() -> None:
    short_ca = CA(*create_ca(days=2))
    cert = _load(create_node_certificate(short_ca.cert, short_ca.key, 1, days=365)[0])
    assert cert.not_valid_after_utc == _load(short_ca.cert).not_valid_after_utc


def test_validity_is_checked_as_tls_checks_it_with_no_extra_tolerance(ca: CA) -> None:
    cert = _load(create_node_certificate(ca.cert, ca.key, 1, days=5)[0])
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    second = datetime.timedelta(seconds=1)
    for now in (start, start + second, end - second, end):  # both ends are inclusive
        check_validity(cert, now=now)
    with pytest.raises(ValidityError) as early:
        check_validity(cert, now=start - second)
    assert not early.value.expired
    assert str(early.value) == (
        f"certificate is not valid yet (not before {start:%Y-%m-%d %H:%M:%S} UTC, "
        f"not after {end:%Y-%m-%d %H:%M:%S} UTC, now {start - second:%Y-%m-%d %H:%M:%S} UTC)"
    )
    with pytest.raises(ValidityError, match=r"^certificate expired \(not before ") as late:
        check_validity(cert, now=end + second)
    assert late.value.expired and late.value.now == end + second
    # Any timezone is accepted and shown in UTC; a naive datetime is refused, not guessed at.
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    with pytest.raises(ValidityError, match=f"now {end + second:%Y-%m-%d %H:%M:%S} UTC"):
        check_validity(cert, now=(end + second).astimezone(plus_two))
    with pytest.raises(ValueError, match="timezone-aware"):
        check_validity(cert, now=datetime.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="not an X.509 certificate"):
        check_validity(b"garbage")


def test_issuance_backdating_covers_a_clock_up_to_clock_skew_behind(ca: CA) -> None:
    # A node whose clock runs behind the issuing machine's by less than CLOCK_SKEW accepts a
    # certificate issued a moment ago; one further behind is refused, naming the dates.
    issued_at = datetime.datetime.now(datetime.UTC)
    cert = create_node_certificate(ca.cert, ca.key, 1)[0]
    check_validity(cert)
    check_validity(cert, now=issued_at - CLOCK_SKEW + datetime.timedelta(seconds=2))
    with pytest.raises(ValidityError):
        check_validity(cert, now=issued_at - CLOCK_SKEW - datetime.timedelta(seconds=2))


def test_each_node_certificate_has_its_own_key(ca: CA) -> None:
    (cert_a, key_a), (_, key_b) = (create_node_certificate(ca.cert, ca.key, 1) for _ in range(2))
    assert key_a != key_b
    assert key_matches_certificate(cert_a, key_a)
    assert not key_matches_certificate(cert_a, key_b)
    with pytest.raises(ValueError, match="does not belong"):
        check_node_credentials(cert_a, key_b, ca.cert)


@pytest.mark.parametrize("node_id", [-1, 256, 1000, 1.0, "1", True, None])
def test_bad_node_ids_are_rejected(ca: CA, node_id: object) -> None:
    with pytest.raises(ValueError, match="node_id"):
        create_node_certificate(ca.cert, ca.key, node_id)  # type: ignore[arg-type]


def test_issuing_needs_a_matching_ca_key_and_a_ca_certificate(ca: CA, other_ca: CA) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        create_node_certificate(ca.cert, other_ca.key, 1)
    leaf_cert, leaf_key = create_node_certificate(ca.cert, ca.key, 1)
    with pytest.raises(ValueError, match="not a CA"):
        create_node_certificate(leaf_cert, leaf_key, 2)
    with pytest.raises(ValueError):
        create_node_certificate(b"garbage", ca.key, 1)
    with pytest.raises(ValueError):
        create_node_certificate(ca.cert, b"garbage", 1)


def test_certificate_from_another_ca_does_not_verify(ca: CA, other_ca: CA) -> None:
    foreign_pem, foreign_key = create_node_certificate(other_ca.cert, other_ca.key, 1)
    foreign = _load(foreign_pem)
    with pytest.raises((InvalidSignature, ValueError)):
        foreign.verify_directly_issued_by(_load(ca.cert))
    with pytest.raises(ValueError, match="not issued by this cluster"):
        check_node_credentials(foreign_pem, foreign_key, ca.cert)
    # Same subject name on both CAs, so only the signature tells them apart.
    assert _load(ca.cert).subject == _load(other_ca.cert).subject


# --------------------------------------------------------------------------- identity rules


@pytest.mark.parametrize(
    ("common_names", "uris", "message"),
    [
        ((), (), "found 0"),
        (("1",), ("https://example.com/",), "found 0"),
        (("1",), ("reign://node/1", "reign://node/2"), "found 2"),
        (("1",), ("reign://node/1", "REIGN://node/1"), "found 2"),
        (("1",), ("reign://node/01",), "plain decimal"),
        (("1",), ("reign://node/+1",), "plain decimal"),
        (("256",), ("reign://node/256",), "plain decimal"),
        (("-1",), ("reign://node/-1",), "plain decimal"),
        (("1",), ("reign://node/1/x",), "plain decimal"),
        (("1",), ("reign://node/ 1",), "plain decimal"),
        (("1",), ("reign://cluster/1",), "plain decimal"),
        (("1",), ("reign:node/1",), "plain decimal"),
        (("2",), ("reign://node/1",), "disagrees"),
        (("node1",), ("reign://node/1",), "disagrees"),
        (("1", "1"), ("reign://node/1",), "common names"),
    ],
)
def test_identity_violations_raise_handshake_error(
    ca: CA, common_names: tuple[str, ...], uris: tuple[str, ...], message: str
) -> None:
    pem = _issue(ca, common_names=common_names, uris=uris)
    with pytest.raises(HandshakeError, match=message):
        node_id_from_certificate(pem)


def test_identity_without_common_name_is_fine(ca: CA) -> None:
    pem = _issue(ca, uris=("reign://node/42", "https://example.com/"))
    assert node_id_from_certificate(pem) == 42


def test_certificate_without_san_is_rejected(ca: CA) -> None:
    pem = _issue(ca, common_names=("1",), with_san=False)
    with pytest.raises(HandshakeError, match="subjectAltName"):
        node_id_from_certificate(pem)


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_unparsable_certificates_raise_handshake_error(data: bytes) -> None:
    with pytest.raises(HandshakeError, match="unreadable"):
        node_id_from_certificate(data)


# --------------------------------------------------------------------------- real TLS


@dataclass
class _Side:
    peer_der: bytes | None = None
    error: BaseException | None = None
    got: bytes = b""


def _context(server: bool, cert: Path, key: Path, ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Python 3.13 turns strict mode on by default; the chain must pass it.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    ctx.load_cert_chain(cert, key)
    return ctx


def _files(tmp_path: Path, name: str, cert: bytes, key: bytes) -> tuple[Path, Path]:
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert)
    write_key(key_path, key)
    return cert_path, key_path


def _tls_exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[_Side, _Side]:
    """One TLS connection over real loopback TCP: the server sends b"ok" after its handshake."""
    server, client = _Side(), _Side()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(HANDSHAKE_TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(HANDSHAKE_TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                server.peer_der = tls.getpeercert(binary_form=True)
                tls.sendall(b"ok")
                server.got = tls.recv(16)
        except BaseException as exc:  # recorded and asserted on by the test
            server.error = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT)
        with raw, client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            client.peer_der = tls.getpeercert(binary_form=True)
            # Under TLS 1.3 the client finishes first; the server's verdict on the client
            # certificate shows up on the first read.
            client.got = tls.recv(16)
            tls.sendall(b"bye")
    except (ssl.SSLError, OSError) as exc:
        client.error = exc
    finally:
        thread.join(HANDSHAKE_TIMEOUT * 2)
        listener.close()
    assert not thread.is_alive()
    return server, client


def test_tls13_handshake_between_two_nodes(tmp_path: Path, ca: CA) -> None:
    one = _files(tmp_path, "one", *create_node_certificate(ca.cert, ca.key, 1))
    two = _files(tmp_path, "two", *create_node_certificate(ca.cert, ca.key, 2))
    server, client = _tls_exchange(_context(True, *one, ca.cert), _context(False, *two, ca.cert))
    assert server.error is None and client.error is None
    assert client.got == b"ok" and server.got == b"bye"
    assert server.peer_der is not None and client.peer_der is not None
    assert node_id_from_certificate(server.peer_der) == 2  # the client's certificate
    assert node_id_from_certificate(client.peer_der) == 1  # the server's certificate


def test_tls_server_rejects_client_from_another_ca(tmp_path: Path, ca: CA, other_ca: CA) -> None:
    one = _files(tmp_path, "one", *create_node_certificate(ca.cert, ca.key, 1))
    intruder = _files(
        tmp_path, "intruder", *create_node_certificate(other_ca.cert, other_ca.key, 2)
    )
    # The intruder trusts our CA (it knows the server), but presents its own CA's certificate.
    server, client = _tls_exchange(
        _context(True, *one, ca.cert), _context(False, *intruder, ca.cert)
    )
    assert isinstance(server.error, ssl.SSLCertVerificationError)
    assert server.peer_der is None
    assert client.got != b"ok"


def test_tls_client_rejects_server_from_another_ca(tmp_path: Path, ca: CA, other_ca: CA) -> None:
    impostor = _files(
        tmp_path, "impostor", *create_node_certificate(other_ca.cert, other_ca.key, 1)
    )
    two = _files(tmp_path, "two", *create_node_certificate(ca.cert, ca.key, 2))
    server, client = _tls_exchange(
        _context(True, *impostor, ca.cert), _context(False, *two, ca.cert)
    )
    assert isinstance(client.error, ssl.SSLCertVerificationError)
    assert client.peer_der is None
    assert server.error is not None
