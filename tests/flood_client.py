"""Unauthenticated clients for the overload tests, in a process of their own (it needs thousands
of file descriptors, and its work must not share the test's event loop).

Usage: python tests/flood_client.py MODE HOST PORT COUNT SOURCES

Opens COUNT TCP connections to HOST:PORT, from source addresses 127.0.0.2, 127.0.0.3, ...
(SOURCES of them, round robin; all of 127.0.0.0/8 is loopback), at most CONCURRENCY connects
in flight at once. MODE says what each connection does:

* ``idle``: nothing; the socket is held open.
* ``hello``: sends one real TLS 1.3 ClientHello (so the server does the key exchange) and then
  nothing, never reading the answer; held open.
* ``junk``: sends a line of plain text that is no TLS at all, and closes (the server logs one
  rejection per connection).

Prints one JSON line ``{"ready": opened, "failed": n, "seconds": s}`` when every connect was
tried, then holds the sockets until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import ssl
import sys
import time

#: Connects in flight at once: enough to fill a listen backlog (512) quickly.
CONCURRENCY = 512
#: Seconds one connect may take (a full backlog drops SYNs; the kernel retries after 1 s).
CONNECT_TIMEOUT = 10.0
JUNK = b"GET / HTTP/1.0\r\n\r\n"


def client_hello() -> bytes:
    """The bytes of one TLS 1.3 ClientHello, made with a memory BIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="reign")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def main(mode: str, host: str, port: int, count: int, sources: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    hello = client_hello()
    held: list[socket.socket] = []
    failed = 0
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        nonlocal failed
        async with slots:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((f"127.0.0.{2 + i % sources}", 0))
                await asyncio.wait_for(loop.sock_connect(sock, (host, port)), CONNECT_TIMEOUT)
                if mode == "hello":
                    await loop.sock_sendall(sock, hello)
                elif mode == "junk":
                    await loop.sock_sendall(sock, JUNK)
                    sock.close()
                    return
            except (OSError, TimeoutError):
                failed += 1
                sock.close()
                return
            held.append(sock)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps({"ready": len(held) if mode != "junk" else count - failed, "failed": failed,
                      "seconds": round(time.monotonic() - t0, 2)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for sock in held:
        sock.close()


if __name__ == "__main__":
    mode, host, port, count, sources = sys.argv[1:6]
    if mode not in ("idle", "hello", "junk"):
        raise SystemExit(f"unknown mode {mode!r}")
    asyncio.run(main(mode, host, int(port), int(count), int(sources)))
