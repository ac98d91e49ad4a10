"""Helpers for testing programs built on reign: throwaway cluster credentials and specs.

Everything is real: :class:`CA` makes a real cluster CA and node certificates (ECDSA P-256, as
``reign_init`` does), :func:`make_cluster` writes them and a ``cluster.json`` whose nodes listen on
loopback ports that were free a moment ago. reign's own tests and benchmarks use these; they are
public so that applications can test their clustered code the same way::

    spec = reign.testing.make_cluster(tmp_path, [1, 2])
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await n1.wait_connected(2)
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ._config import certs as _certs

__all__ = ["CA", "free_ports", "make_cluster", "wait_until", "write_spec"]


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


class CA:
    """A cluster CA in a folder, issuing node certificates on demand."""

    def __init__(self, folder: Path, organization: str = "reign-test") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = _certs.create_ca(organization)
        (folder / "reign_ca.crt").write_bytes(self.cert)

    def issue(self, node_id: int, folder: Path | None = None) -> tuple[bytes, bytes]:
        cert, key = _certs.create_node_certificate(self.cert, self.key, node_id)
        target = folder or self.folder
        (target / f"reign_node.{node_id}.crt").write_bytes(cert)
        (target / f"reign_node.{node_id}.key").write_bytes(key)
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
