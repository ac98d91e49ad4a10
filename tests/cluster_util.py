"""Helpers for cluster tests: child-process nodes, hand-driven peers, waiting and draining.

Throwaway CAs, certificates and specs come from :mod:`reign.testing` (re-exported here).
Everything is real: real certificates, real TLS, real sockets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from reign.testing import CA, free_ports, make_cluster, wait_until, write_key, write_spec  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parent.parent
NODE_PROC = Path(__file__).resolve().parent / "node_proc.py"


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until true; fail the test (TimeoutError) after ``timeout`` seconds."""
    await wait_until(predicate, timeout=timeout, interval=interval)


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


async def raw_peer(spec_path: Path, as_node: int, to: Any, incarnation: int = 7,
                   rcvbuf: int | None = None) -> tuple[Any, Any, Any]:
    """A hand-driven authenticated peer: real TLS with ``as_node``'s certificate to node ``to``
    (a started reign.Node), HELLO and ACCEPT done. Returns ``(reader, writer, protocol)`` where
    ``protocol`` is the peer's own ``reign._core.protocol.PeerProtocol`` for crafting frames.
    ``rcvbuf`` sets the socket's SO_RCVBUF (bytes) before connecting: a small one makes a peer
    that stops reading push back on the node at once, instead of after the kernel's ~32 MiB."""
    import socket

    from reign import ClusterSpec
    from reign._config.certs import cluster_identity
    from reign._config.tls import client_context
    from reign._core.protocol import Established, PeerProtocol

    cert, key, ca = ClusterSpec.load(spec_path).load_credentials(as_node)
    host, port = listen_address(to)
    ctx = client_context(cert, key, ca)
    if rcvbuf is None:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname=host)
    protocol = PeerProtocol(local_node=as_node, local_incarnation=incarnation,
                            cluster_id=cluster_identity(ca), expected_peer=to.id)
    writer.write(protocol.data_to_send())
    events: list[Any] = []
    while Established not in map(type, events):  # the node's HELLO and ACCEPT
        events += protocol.receive_data(await asyncio.wait_for(reader.read(65536), 10))
        writer.write(protocol.data_to_send())
    await wait_for(lambda: to.statistics().peers[as_node].state == "up")
    return reader, writer, protocol


def listen_address(node: Any) -> tuple[str, int]:
    """Where the started clustered ``node`` listens."""
    return node.spec.node(node.id).listen_address  # type: ignore[no-any-return]


def drain(mbox: Any) -> list[object]:
    """Every message queued in ``mbox`` right now, oldest first."""
    from reign import Empty

    out = []
    while True:
        try:
            out.append(mbox.receive_nowait())
        except Empty:
            return out
