"""Helpers for cluster tests: throwaway CAs, node certificates, specs on free loopback ports,
and child-process nodes. Everything is real: real certificates, real TLS, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reign import _certs

ROOT = Path(__file__).resolve().parent.parent
NODE_PROC = Path(__file__).resolve().parent / "node_proc.py"


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


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until true; fail the test (TimeoutError) after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)


async def wait_connected(nodes: list[Any], timeout: float = 20.0) -> None:
    """Wait until every node sees every other node of the list as up."""

    def all_up() -> bool:
        for node in nodes:
            stats = node.statistics().peers
            for other in nodes:
                if other is not node and stats[other.id].state != "up":
                    return False
        return True

    await wait_for(all_up, timeout)


class ChildNode:
    """A reign node in its own OS process running ``tests/node_proc.py``."""

    def __init__(self, spec: Path, node_id: int, *extra: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(NODE_PROC), str(spec), str(node_id), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            text=True,
        )
        self.node_id = node_id

    async def read_line(self, prefix: str, timeout: float = 30.0) -> str:
        """The rest of the first stdout line starting with ``prefix``."""
        loop = asyncio.get_running_loop()

        def read() -> str:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            raise EOFError(f"child node {self.node_id} ended without printing {prefix!r}: "
                           f"{self.proc.stderr.read() if self.proc.stderr else ''}")

        return await asyncio.wait_for(loop.run_in_executor(None, read), timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


async def raw_peer(spec_path: Path, as_node: int, to: Any, incarnation: int = 7) -> tuple[Any, Any, Any]:
    """A hand-driven authenticated peer: real TLS with ``as_node``'s certificate to node ``to``
    (a started reign.Node), HELLO and ACCEPT done. Returns ``(reader, writer, wire)`` where
    ``wire`` is the peer's own ``reign._wire.WireProtocol`` for crafting frames."""
    from reign import ClusterSpec, _wire
    from reign._certs import cluster_identity
    from reign._tls import client_context

    cert, key, ca = ClusterSpec.load(spec_path).load_credentials(as_node)
    host, port = to._cluster.me.listen_address
    reader, writer = await asyncio.open_connection(host, port, ssl=client_context(cert, key, ca))
    wire = _wire.WireProtocol(local_node=as_node, local_incarnation=incarnation,
                              cluster_id=cluster_identity(ca), expected_peer=to.id)
    writer.write(wire.hello())
    events: list[Any] = []
    while len(events) < 2:  # the node's HELLO and ACCEPT
        events += wire.receive_data(await asyncio.wait_for(reader.read(65536), 10))
    writer.write(wire.accept())
    await wait_for(lambda: to.statistics().peers[as_node].state == "up")
    return reader, writer, wire


def drain(mbox: Any) -> list[object]:
    """Every message queued in ``mbox`` right now, oldest first."""
    from reign import Empty

    out = []
    while True:
        try:
            out.append(mbox.receive_nowait())
        except Empty:
            return out
