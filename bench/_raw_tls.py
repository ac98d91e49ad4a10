"""The raw-TLS baseline for ``bench/cluster.py``: reign's framing without reign.

Same wire shape as reign's MESSAGE frame (u32 length N, type byte, u64 incarnation, u64 serial,
payload), over uvloop mutual TLS with the same certificates and contexts (``reign._tls``), reads
through ``asyncio.BufferedProtocol`` and writes coalesced per loop iteration (frames produced in
one iteration are joined into one ``transport.write``). No codec, no mailboxes, no routing: the
payload bytes are the CBOR bytes reign would send, parsed out as ``bytes`` and not decoded.

The server side (run in the bench's child process) understands:

* MESSAGE with serial ``SINK``: counted; when the count set by a COUNT control frame is
  reached, a DONE control frame carrying the server's ``time.monotonic()`` is sent back.
* MESSAGE with serial ``ECHO``: the frame is sent back unchanged (from inside the read
  callback: the cheapest possible echo).
* CONTROL ``b"N" + u64``: expect that many SINK messages from now on.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

MESSAGE = 3
CONTROL = 8
SINK = 1
ECHO = 2
READ_BUFFER_BYTES = 256 * 1024
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024

_HEADER = struct.Struct(">IB")
_MESSAGE_HEADER = struct.Struct(">IBQQ")
_IDS = struct.Struct(">QQ")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")


class RawConnection(asyncio.BufferedProtocol):
    """One end of a raw framed TLS connection (client or server)."""

    def __init__(self, server: bool = False) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.buffer = bytearray(READ_BUFFER_BYTES)
        self.view = memoryview(self.buffer)
        self.pending = bytearray()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.drained = asyncio.Event()
        self.drained.set()
        self.made = self.loop.create_future()
        self.lost = self.loop.create_future()
        self.lost_at: float | None = None
        # server state
        self.expect = 0
        self.count = 0
        self.cpu0 = 0.0
        # client state
        self.reply: asyncio.Future[Any] | None = None

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        if not self.made.done():
            self.made.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_at = time.monotonic()
        if not self.lost.done():
            self.lost.set_result(self.lost_at)
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("raw connection lost"))

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        buf = self.pending
        buf += self.view[:nbytes]
        end = len(buf)
        pos = 0
        unpack_header = _HEADER.unpack_from
        unpack_ids = _IDS.unpack_from
        view = memoryview(buf)
        try:
            while end - pos >= 5:
                n, frame_type = unpack_header(buf, pos)
                frame_end = pos + 4 + n
                if frame_end > end:
                    break
                if frame_type == MESSAGE:
                    _incarnation, serial = unpack_ids(buf, pos + 5)
                    payload = view[pos + 21 : frame_end].tobytes()
                    self.on_message(serial, payload)
                else:
                    self.on_control(view[pos + 5 : frame_end].tobytes())
                pos = frame_end
        finally:
            view.release()
        del buf[:pos]

    # ---------------------------------------------------------------- frames

    def on_message(self, serial: int, payload: bytes) -> None:
        if serial == SINK:
            self.count += 1
            if self.count == self.expect:
                cpu = time.process_time() - self.cpu0
                self.write(_HEADER.pack(17, CONTROL) + _F64.pack(time.monotonic()) + _F64.pack(cpu))
        elif serial == ECHO:
            if self.server:
                self.write_message(serial, payload)
            elif self.reply is not None and not self.reply.done():
                self.reply.set_result(payload)

    def on_control(self, body: bytes) -> None:
        if self.server:
            if body[:1] == b"N":
                self.expect = _U64.unpack_from(body, 1)[0]
                self.count = 0
                self.cpu0 = time.process_time()
        elif self.reply is not None and not self.reply.done():
            self.reply.set_result((_F64.unpack_from(body, 0)[0], _F64.unpack_from(body, 8)[0]))

    # ---------------------------------------------------------------- writing (coalesced)

    def write(self, frame: bytes) -> None:
        self.out.append(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def write_message(self, serial: int, payload: bytes) -> None:
        out = self.out
        out.append(_MESSAGE_HEADER.pack(17 + len(payload), MESSAGE, 1, serial))
        out.append(payload)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if not self.out or self.transport is None or self.transport.is_closing():
            self.out = []
            return
        data = b"".join(self.out)
        self.out = []
        self.transport.write(data)


# -------------------------------------------------------------------- client-side benchmarks


async def oneway(conn: RawConnection, payloads: Any, n: int, batch: int) -> tuple[float, float, float]:
    """Send ``n`` SINK frames (payload ``payloads(i)``): (msgs/s until the server saw the n-th,
    sender CPU seconds, receiver CPU seconds)."""
    reply = conn.reply = conn.loop.create_future()
    conn.write(_HEADER.pack(10, CONTROL) + b"N" + _U64.pack(n))
    write_message = conn.write_message
    drained = conn.drained
    t0 = time.monotonic()
    cpu0 = time.process_time()
    for start in range(0, n, batch):
        for i in range(start, min(start + batch, n)):
            write_message(SINK, payloads(i))
        if not drained.is_set():
            conn.flush()
            await drained.wait()
        await asyncio.sleep(0)
    end, receiver_cpu = await asyncio.wait_for(reply, 120)
    return n / (end - t0), time.process_time() - cpu0, receiver_cpu


async def pingpong(conn: RawConnection, payload: bytes, n: int) -> list[float]:
    """``n`` ECHO round trips, one at a time; each round trip's seconds."""
    loop = conn.loop
    perf = time.perf_counter
    times = []
    for _ in range(n):
        reply = conn.reply = loop.create_future()
        t0 = perf()
        conn.write_message(ECHO, payload)
        await reply
        times.append(perf() - t0)
    return times


async def connect(host: str, port: int, ssl_context: Any) -> RawConnection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        RawConnection, host, port, ssl=ssl_context, server_hostname=host
    )
    await conn.made
    return conn  # type: ignore[return-value]


async def serve(host: str, port: int, ssl_context: Any) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: RawConnection(server=True), host, port, ssl=ssl_context, backlog=64
    )
