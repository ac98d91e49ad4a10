"""TLS contexts for the node mesh: TLS 1.3 only, both sides present certificates from the CA.

Invariants:

* Server contexts require a client certificate (``CERT_REQUIRED``) signed by the cluster CA;
  client contexts verify the server's certificate against the same CA. Hostnames are not
  checked: a node's identity is the node id its certificate proves (see ``_certs``), which the
  connector checks against the node it dialled or the HELLO it received.
* Key material given as PEM bytes is loaded through a private temporary directory (mode 0700,
  files 0600) that is removed before the function returns: ``ssl`` only loads chains from files.
"""

from __future__ import annotations

import os
import ssl
import tempfile

__all__ = ["server_context", "client_context"]


def _context(purpose: int, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    if purpose == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    with tempfile.TemporaryDirectory(prefix="reign-tls-") as folder:
        cert_file = os.path.join(folder, "node.crt")
        key_file = os.path.join(folder, "node.key")
        for path, data in ((cert_file, cert_pem), (key_file, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def server_context(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.3 server context that requires a client certificate from the cluster CA."""
    return _context(ssl.PROTOCOL_TLS_SERVER, cert_pem, key_pem, ca_pem)


def client_context(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting this node's certificate and trusting only the CA."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, cert_pem, key_pem, ca_pem)
