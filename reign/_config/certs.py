"""Cluster certificates: a private CA and the node certificates it signs.

Pure functions: PEM (or DER) bytes in, PEM bytes out. Nothing here touches the file system, the
network or the clock beyond reading "now" when a certificate is issued or its dates are checked
without an explicit time; writing files is the job of the ``reign_init`` command line tool,
loading them the job of :mod:`reign._config.spec` (file modes: :mod:`reign._config.keyfiles`).

Node identity (this is the one place it is defined)
---------------------------------------------------
A cluster is a set of nodes that trust one private certificate authority (the "cluster
certificate", ``reign_ca.crt``). A node proves *which* node it is with its TLS certificate:

* The certificate carries exactly one subjectAltName URI of the form ``reign://node/<N>``, where
  ``<N>`` is the node id in plain decimal (``0``..``255``; no sign, no leading zeros, no spaces).
  This URI is the identity; it is what :func:`node_id_from_certificate` reads.
* The subject common name, if the certificate has one, must be the same decimal number. It is
  there for humans reading ``openssl x509 -text``; a certificate whose CN disagrees with its URI
  is rejected rather than guessed at.
* The certificate must chain to the cluster CA. That is checked by TLS itself (both sides use
  ``CERT_REQUIRED`` with the cluster CA as the only trust anchor), not by the functions here.

A URI SAN was chosen over the CN alone because SANs are the standard place for identities (RFC
6125 deprecates CN matching) and because a dedicated ``reign:`` scheme cannot collide with a DNS
name. Node certificates additionally list DNS ``localhost`` and IP ``127.0.0.1`` so ordinary TLS
tooling with hostname checking accepts them on a development machine; reign itself never
identifies a peer by host name.

:func:`cluster_identity` condenses the CA certificate to a SHA-256 digest of its DER encoding;
two nodes belong to the same cluster exactly when their digests are equal.

Invariants of what this module issues:

* Keys are ECDSA on P-256, signatures ECDSA with SHA-256, keys serialized as unencrypted PKCS#8
  PEM (the files are protected by their mode, see ``reign_init``).
* The CA is ``CA:TRUE, pathlen:0`` (critical), key usage ``keyCertSign, cRLSign`` (critical), with
  subject and authority key identifiers, so OpenSSL's strict X.509 mode accepts the chain.
* Node certificates are ``CA:FALSE`` (critical), key usage ``digitalSignature`` (critical),
  extended key usage ``serverAuth, clientAuth`` (every node both dials and accepts), with an
  authority key identifier taken from the CA.
* Every certificate's validity starts :data:`CLOCK_SKEW` in the past, and a node certificate never
  outlives the CA that signed it.

Validity dates are checked by :func:`check_validity` exactly as a TLS peer checks them
(``notBefore <= now <= notAfter``, no extra tolerance): the backdating above is the whole
allowance for clocks running behind the issuer's, so a certificate accepted here is one a peer
with a correct clock accepts too, and one refused here would be refused at every handshake.
* Serial numbers are 159 random bits (positive, below 2**159, as RFC 5280 allows 20 octets).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import secrets

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._core.ids import MAX_NODE_ID
from .._errors import HandshakeError

__all__ = [
    "CA_COMMON_NAME",
    "CLOCK_SKEW",
    "DEFAULT_DAYS",
    "DEFAULT_ORGANIZATION",
    "MAX_DAYS",
    "NODE_URI_PREFIX",
    "ValidityError",
    "check_ca_credentials",
    "check_node_credentials",
    "check_organization",
    "check_validity",
    "cluster_identity",
    "create_ca",
    "create_node_certificate",
    "key_matches_certificate",
    "load_certificate",
    "load_private_key",
    "node_id_from_certificate",
    "node_uri",
]

#: Common name of every CA this module creates.
CA_COMMON_NAME = "reign cluster CA"
#: Organization put into certificates when the caller names none.
DEFAULT_ORGANIZATION = "reign"
#: Default lifetime of a certificate, in days (matches the ``reign_init --days`` default).
DEFAULT_DAYS = 365
#: Longest lifetime accepted, in days: 100 years. Far beyond any sane use, yet it keeps
#: ``notAfter`` well inside X.509's GeneralizedTime range (year 9999) for the foreseeable future.
MAX_DAYS = 36_500
#: How far in the past validity starts, to tolerate clocks of other machines running behind.
#: Five minutes is the customary allowance (Kerberos' default maximum clock skew).
CLOCK_SKEW = datetime.timedelta(minutes=5)
#: Prefix of the subjectAltName URI that carries the node id.
NODE_URI_PREFIX = "reign://node/"

# X.520 upper bound for organizationName (ub-organization-name), RFC 5280 appendix A.1.
_MAX_ORGANIZATION_CHARS = 64
# RFC 5280 4.1.2.2: serial numbers are at most 20 octets and positive.
_SERIAL_BITS = 159
_DECIMAL_ID_RE = re.compile(r"0|[1-9][0-9]{0,2}")
_CURVE = ec.SECP256R1()
_HASH = hashes.SHA256()


# --------------------------------------------------------------------------- helpers


def node_uri(node_id: int) -> str:
    """The subjectAltName URI naming ``node_id``: ``reign://node/<node_id>``.

    Raises :class:`ValueError` if ``node_id`` is not an int (bools excluded) in 0..255.
    """
    _check_node_id(node_id)
    return f"{NODE_URI_PREFIX}{node_id}"


def _check_node_id(node_id: object) -> int:
    if type(node_id) is not int or not 0 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node_id must be an int in 0..{MAX_NODE_ID}, got {node_id!r}")
    return node_id


def _check_days(days: object) -> int:
    if type(days) is not int or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be an int in 1..{MAX_DAYS}, got {days!r}")
    return days


def check_organization(organization: object) -> str:
    """Return ``organization`` if it can name a certificate's organization, else raise.

    Accepted: a str of 1..64 characters (the X.520 bound), not all whitespace, no control
    characters. Raises :class:`ValueError` saying what is wrong otherwise.
    """
    if not isinstance(organization, str) or not organization.strip():
        raise ValueError(f"organization must be a non-empty string, got {organization!r}")
    if len(organization) > _MAX_ORGANIZATION_CHARS:
        raise ValueError(
            f"organization must be at most {_MAX_ORGANIZATION_CHARS} characters, "
            f"got {len(organization)}"
        )
    if any(not ch.isprintable() for ch in organization):
        raise ValueError(f"organization must not contain control characters: {organization!r}")
    return organization


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_certificate(data: bytes | x509.Certificate) -> x509.Certificate:
    """Parse one certificate from PEM or DER bytes (or pass a parsed one through).

    PEM is recognised by its ``-----BEGIN`` armour (leading whitespace allowed); when a PEM
    bundle holds several certificates, the first is returned. Anything else is parsed as DER,
    which is what :meth:`ssl.SSLSocket.getpeercert` returns with ``binary_form=True``.

    Raises :class:`ValueError` if the bytes are not a certificate.
    """
    if isinstance(data, x509.Certificate):
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"a certificate is given as bytes, not {type(data).__name__}")
    raw = bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise ValueError(f"not an X.509 certificate: {exc}") from None


def load_private_key(key_pem: bytes) -> PrivateKeyTypes:
    """Parse an unencrypted PEM private key.

    Returns the key object of whatever type the PEM holds (reign issues P-256 keys, but any key
    type OpenSSL can use for TLS is accepted). Raises :class:`ValueError` if the bytes are not an
    unencrypted PEM private key.
    """
    if not isinstance(key_pem, (bytes, bytearray, memoryview)):
        raise ValueError(f"a private key is given as PEM bytes, not {type(key_pem).__name__}")
    try:
        return serialization.load_pem_private_key(bytes(key_pem), password=None)
    except TypeError:  # raised when the PEM is encrypted and no password was given
        raise ValueError("the private key is encrypted; reign needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a usable PEM private key: {exc}") from None


def key_matches_certificate(cert: bytes | x509.Certificate, key_pem: bytes) -> bool:
    """True when the private key in ``key_pem`` belongs to the public key of ``cert``.

    Raises :class:`ValueError` if either cannot be parsed.
    """
    certificate = load_certificate(cert)
    key = load_private_key(key_pem)
    return _spki(key.public_key()) == _spki(certificate.public_key())


def check_ca_credentials(ca_cert_pem: bytes, ca_key_pem: bytes) -> None:
    """Check that a CA certificate and key can sign node certificates.

    Guarantees on success: both parse, the key belongs to the certificate, the certificate says
    ``CA:TRUE`` and the key type can sign. Validity dates are not checked here (see
    :func:`check_validity`).
    Raises :class:`ValueError` saying what is wrong otherwise.
    """
    _load_ca(ca_cert_pem, ca_key_pem)


def _load_ca(
    ca_cert_pem: bytes, ca_key_pem: bytes
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    ca_cert = load_certificate(ca_cert_pem)
    ca_key = _signing_key(load_private_key(ca_key_pem))
    if _spki(ca_key.public_key()) != _spki(ca_cert.public_key()):
        raise ValueError("the CA private key does not belong to the CA certificate")
    if not _is_ca(ca_cert):
        raise ValueError("the signing certificate is not a CA (BasicConstraints CA:TRUE missing)")
    return ca_cert, ca_key


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _random_serial() -> int:
    # 159 random bits: positive and at most 20 octets, as RFC 5280 requires (0 is astronomically
    # unlikely and still avoided).
    return (int.from_bytes(secrets.token_bytes(20), "big") >> (160 - _SERIAL_BITS)) or 1


def _signing_key(key: PrivateKeyTypes) -> CertificateIssuerPrivateKeyTypes:
    # The key types TLS stacks accept for a CA; DSA and the post-quantum types are left out.
    if not isinstance(
        key,
        (
            ec.EllipticCurvePrivateKey,
            rsa.RSAPrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        raise ValueError(f"a {type(key).__name__} cannot sign reign certificates")
    return key


def _signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign the message itself; every other key type signs a SHA-256 digest.
    return None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else _HASH


# --------------------------------------------------------------------------- issuing


def create_ca(
    organization: str = DEFAULT_ORGANIZATION, days: int = DEFAULT_DAYS
) -> tuple[bytes, bytes]:
    """Create a fresh cluster certificate authority.

    Returns ``(cert_pem, key_pem)``: a self-signed ECDSA P-256 certificate with subject
    ``CN=reign cluster CA, O=<organization>`` valid from five minutes ago for ``days`` days, and
    its unencrypted PKCS#8 private key. Every call makes a new key, hence a new cluster.

    Raises :class:`ValueError` if ``days`` is not an int in 1..:data:`MAX_DAYS` or
    ``organization`` is empty, longer than 64 characters or holds control characters.
    """
    _check_days(days)
    check_organization(organization)
    key = ec.generate_private_key(_CURVE)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )
    not_before = _now() - CLOCK_SKEW
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CLOCK_SKEW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _HASH)
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def create_node_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    node_id: int,
    days: int = DEFAULT_DAYS,
    organization: str | None = None,
) -> tuple[bytes, bytes]:
    """Issue the certificate that identifies node ``node_id`` in the CA's cluster.

    Returns ``(cert_pem, key_pem)`` for a new ECDSA P-256 key. The certificate has
    ``CN=<node_id>`` and subjectAltNames ``URI:reign://node/<node_id>``, ``DNS:localhost`` and
    ``IP:127.0.0.1`` (see the module docstring for what identifies a node). Its organization is
    ``organization`` or, when that is None, the CA's organization (else ``"reign"``). Validity
    starts five minutes ago and lasts ``days`` days, cut short to the CA's own ``notAfter``.

    Raises :class:`ValueError` if ``node_id`` is not an int in 0..255, ``days`` is out of range,
    the CA certificate or key cannot be parsed, the key does not belong to the certificate, or the
    certificate is not a CA.
    """
    _check_node_id(node_id)
    _check_days(days)
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    if organization is None:
        found = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        organization = str(found[0].value) if found else DEFAULT_ORGANIZATION
    check_organization(organization)

    key = ec.generate_private_key(_CURVE)
    not_before = _now() - CLOCK_SKEW
    if ca_cert.not_valid_after_utc <= not_before + CLOCK_SKEW:
        raise ValueError(
            f"the CA certificate expired on {ca_cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    not_after = min(
        not_before + CLOCK_SKEW + datetime.timedelta(days=days), ca_cert.not_valid_after_utc
    )
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, str(node_id)),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(node_uri(node_id)),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, _signature_hash(ca_key))
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


# --------------------------------------------------------------------------- reading identity


def node_id_from_certificate(cert: bytes | x509.Certificate) -> int:
    """The node id a certificate identifies, per the rules in the module docstring.

    ``cert`` is PEM bytes, DER bytes (as from ``getpeercert(binary_form=True)``) or a parsed
    :class:`cryptography.x509.Certificate`. This reads identity only; it does not check the
    signature or validity dates (TLS has done that when the certificate came from a peer).

    Raises :class:`HandshakeError`, saying what was wrong, when the bytes are not a certificate,
    there is no subjectAltName, there is not exactly one ``reign:`` URI, that URI is not
    ``reign://node/<N>`` with ``N`` plain decimal in 0..255, or a common name disagrees with ``N``.
    """
    try:
        certificate = load_certificate(cert)
    except ValueError as exc:
        raise HandshakeError(f"peer certificate unreadable: {exc}") from None
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise HandshakeError(
            f"certificate has no subjectAltName, so no {NODE_URI_PREFIX}<N> node identity"
        ) from None
    except ValueError as exc:  # malformed extensions surface lazily
        raise HandshakeError(f"certificate extensions unreadable: {exc}") from None
    uris = [
        uri
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri[:6].lower() == "reign:"
    ]
    if len(uris) != 1:
        raise HandshakeError(
            f"certificate must carry exactly one {NODE_URI_PREFIX}<N> subjectAltName URI, "
            f"found {len(uris)}: {uris[:4]!r}"
        )
    uri = uris[0]
    number = uri[len(NODE_URI_PREFIX) :] if uri.startswith(NODE_URI_PREFIX) else None
    if number is None or _DECIMAL_ID_RE.fullmatch(number) is None or int(number) > MAX_NODE_ID:
        raise HandshakeError(
            f"certificate identity URI {uri[:80]!r} is not {NODE_URI_PREFIX}<N> with N in "
            f"0..{MAX_NODE_ID} in plain decimal"
        )
    node_id = int(number)
    common_names = [
        attr.value for attr in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    if len(common_names) > 1:
        raise HandshakeError(f"certificate subject has {len(common_names)} common names")
    if common_names and common_names[0] != str(node_id):
        raise HandshakeError(
            f"certificate common name {str(common_names[0])[:80]!r} disagrees with its "
            f"identity URI {uri!r}"
        )
    return node_id


def check_node_credentials(cert_pem: bytes, key_pem: bytes, ca_cert_pem: bytes) -> int:
    """Check that a node's certificate, key and cluster CA fit together; return its node id.

    Guarantees on success: the key belongs to the certificate, the certificate is signed directly
    by the CA (signature and issuer name), and it carries a valid node identity. Validity dates
    are not checked here (:func:`check_validity` does; a TLS peer checks them at handshake).

    Raises :class:`ValueError` for unparsable input, a mismatched key or a certificate the CA did
    not sign; :class:`HandshakeError` for a certificate without a valid node identity.
    """
    certificate = load_certificate(cert_pem)
    ca = load_certificate(ca_cert_pem)
    if not key_matches_certificate(certificate, key_pem):
        raise ValueError("the private key does not belong to the certificate")
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError("the certificate was not issued by this cluster's CA") from None
    return node_id_from_certificate(certificate)


class ValidityError(ValueError):
    """A certificate outside its validity period. ``expired`` tells which side it is on.

    The message names the three dates in UTC: ``certificate expired (not before ..., not after
    ..., now ...)`` or ``certificate is not valid yet (...)``.
    """

    def __init__(
        self,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
        now: datetime.datetime,
    ) -> None:
        self.not_before, self.not_after, self.now = not_before, not_after, now
        self.expired = now > not_after
        state = "expired" if self.expired else "is not valid yet"
        super().__init__(
            f"certificate {state} (not before {_utc(not_before)}, not after {_utc(not_after)}, "
            f"now {_utc(now)})"
        )


def _utc(moment: datetime.datetime) -> str:
    return f"{moment.astimezone(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"


def check_validity(
    cert: bytes | x509.Certificate, *, now: datetime.datetime | None = None
) -> None:
    """Check that ``cert`` is within its validity period at ``now`` (default: the current time).

    Valid means ``notBefore <= now <= notAfter``, the test OpenSSL applies at handshake, with no
    tolerance beyond the :data:`CLOCK_SKEW` backdating issuance already applies. ``now`` must be
    timezone-aware. Raises :class:`ValidityError` (a :class:`ValueError`) naming the dates when
    it is not, :class:`ValueError` if ``cert`` is not a certificate or ``now`` is naive.
    """
    certificate = load_certificate(cert)
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if not not_before <= now <= not_after:
        raise ValidityError(not_before, not_after, now)


def cluster_identity(ca_cert_pem: bytes) -> bytes:
    """SHA-256 of the cluster CA certificate's DER encoding (32 bytes).

    Equal digests mean the same CA, hence the same cluster; the digest does not depend on PEM
    whitespace or line endings. Used by the HELLO exchange. Accepts DER too.

    Raises :class:`ValueError` if ``ca_cert_pem`` is not a certificate.
    """
    ca = load_certificate(ca_cert_pem)
    return hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).digest()
