"""Helpers for testing programs built on reign: throwaway cluster credentials and specs.

Everything is real: :class:`CA` makes a real cluster CA and node certificates (ECDSA P-256, as
``reign_init`` does), :func:`make_cluster` writes them and a ``cluster.json`` whose nodes listen on
loopback ports that were free a moment ago. reign's own tests and benchmarks use these; they are
public so that applications can test their clustered code the same way::

    spec = reign.testing.make_cluster(tmp_path, [1, 2])
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await n1.wait_connected(2)

Private keys are written with mode 0600 whatever the umask, as ``reign_init`` writes them: a
node refuses to start with a key file that group or others may read (see
:meth:`reign.ClusterSpec.load_credentials`). Tests that write a key file of their own use
:func:`write_key`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ._config import certs as _certs

__all__ = ["CA", "free_ports", "make_cluster", "wait_until", "write_key", "write_spec"]

#: Mode of every private key file written here: owner read/write only, as ``reign_init`` writes
#: them (a node refuses a key file with any group or other bit set).
_KEY_MODE = 0o600


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (closed again, so free for a moment)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_key(path: Path, key_pem: bytes) -> None:
    """Write a private key file with mode exactly 0600.

    Exactly 0600 whatever the umask; an existing file is truncated on open and set to 0600 before
    the key is written into it, so the key is never readable by others, not even for a moment.
    Replaces any previous content. Raises :class:`OSError`.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), _KEY_MODE)
    try:
        os.fchmod(fd, _KEY_MODE)  # an existing file keeps its mode through os.open; set it
        view = memoryview(key_pem)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class CA:
    """A cluster CA in a folder, issuing node certificates on demand.

    ``cert`` and ``key`` are the CA's PEM; only the certificate is written (``reign_ca.crt``).
    """

    def __init__(self, folder: Path, organization: str = "reign-test") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = _certs.create_ca(organization)
        (folder / "reign_ca.crt").write_bytes(self.cert)

    def issue(self, node_id: int, folder: Path | None = None) -> tuple[bytes, bytes]:
        """Issue node ``node_id``'s certificate; write ``reign_node.N.crt`` and ``.key`` (0600).

        Files go into ``folder`` (default: the CA's folder), replacing what is there. Returns
        ``(cert_pem, key_pem)``.
        """
        cert, key = _certs.create_node_certificate(self.cert, self.key, node_id)
        target = folder or self.folder
        (target / f"reign_node.{node_id}.crt").write_bytes(cert)
        write_key(target / f"reign_node.{node_id}.key", key)
        return cert, key


def write_spec(folder: Path, ids: Iterable[int], **tuning: Any) -> Path:
    """A cluster.json for ``ids`` on free loopback ports, credentials beside it."""
    ids = list(ids)
    ports = free_ports(len(ids))
    spec = {
        "nodes": [{"id": i, "address": f"127.0.0.1:{p}"} for i, p in zip(ids, ports)],
        "node_key_path": "reign_node.%d.key",
        "node_cert_path": "reign_node.%d.crt",
        "cluster_cert_path": "reign_ca.crt",
        **tuning,
    }
    path = folder / "cluster.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def make_cluster(folder: Path, ids: Iterable[int], **tuning: Any) -> Path:
    """A CA, a certificate per node and a spec, all in ``folder``; returns the spec path."""
    ids = list(ids)
    ca = CA(folder)
    for i in ids:
        ca.issue(i)
    return write_spec(folder, ids, **tuning)


async def wait_until(predicate: Callable[[], object], *, timeout: float = 20.0, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until it is true; TimeoutError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)
