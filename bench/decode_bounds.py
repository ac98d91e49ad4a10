"""What one maximum-size message costs the receiving node: RSS and loop time (issue 13, item 7).

What it measures: for each hostile shape, a payload crafted byte by byte (an attacker does not
go through our encoder) as large as ``max_message_bytes`` allows, framed as a MESSAGE from an
established peer and fed to the node's one receive path (:meth:`Inbound.receive`, the code the
connection calls with each read) in 256 KiB reads. Per shape, in a fresh process:

* ``outcome``: delivered, or the DecodeError's reason (the connection would be closed);
* ``blocked``: the longest single ``receive`` call (the loop cannot run anything else meanwhile:
  it includes the pre-scan and cbor2's decode of the whole payload);
* ``free``: dropping the delivered value (also loop time, whenever the application drops it);
* ``RSS``: peak resident set size during the receive over the resident size just before it
  (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``), so the frame bytes
  themselves are in the baseline and the copies the receive path makes are not;
* ``encode``: for shapes a sender can build as values, the time ``encode`` takes for the same
  message (or to refuse it), the sender's own loop time.

Run: ``.venv/bin/python bench/decode_bounds.py [--max-message-bytes N] [--only a,b]``. Shapes
run one after the other (one core), ~1-2 minutes in all.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

READ = 256 * 1024
MIB = 1 << 20


def _array(units: Callable[[int], bytes] | bytes, size: int, unit_len: int) -> bytes:
    """A CBOR array of as many ``unit_len``-byte items as fit in ``size`` bytes."""
    count = (size - 9) // unit_len
    head = (b"\x9a" + count.to_bytes(4, "big")) if count < 1 << 32 else b"\x9b" + count.to_bytes(8, "big")
    if isinstance(units, bytes):
        return head + units * count
    return head + b"".join(units(i) for i in range(count))


def _id_parts(i: int) -> bytes:  # [node 3, incarnation 2**62 + i, serial i] as our encoder writes ids
    return b"\x83\x18\x03\x1b" + (2**62 + i).to_bytes(8, "big") + b"\x1b" + i.to_bytes(8, "big")


def _text(s: str) -> bytes:
    data = s.encode()
    assert len(data) < 24
    return bytes([0x60 | len(data)]) + data


#: name -> (payload builder of a size, value builder for the encoder or None)
SHAPES: dict[str, tuple[Callable[[int], bytes], Callable[[int], Any] | None]] = {
    "[{'ab': 0}, ...] (issue)": (
        lambda n: _array(b"\xa1\x62ab\x00", n, 5), lambda n: [{"ab": 0} for _ in range(n // 5)]),
    "[[0], ...]": (lambda n: _array(b"\x81\x00", n, 2), lambda n: [[0] for _ in range(n // 2)]),
    "[[0, 0], ...]": (lambda n: _array(b"\x82\x00\x00", n, 3), None),
    "[[], ...]": (lambda n: _array(b"\x80", n, 1), lambda n: [[] for _ in range(n)]),
    "[{}, ...]": (lambda n: _array(b"\xa0", n, 1), None),
    "[(), ...]": (lambda n: _array(b"\xd9\xc8\x00\x80", n, 4), None),
    "[0, ...] small ints": (lambda n: _array(b"\x00", n, 1), lambda n: [0] * n),
    "[-20, ...] uncached ints": (lambda n: _array(b"\x33", n, 1), lambda n: [-20] * n),
    "[2**40, ...] big ints": (lambda n: _array(b"\x1b" + (2**40).to_bytes(8, "big"), n, 9), None),
    "[1.5, ...] floats": (lambda n: _array(b"\xfb?\xf8\x00\x00\x00\x00\x00\x00", n, 9), None),
    "['ab', ...]": (lambda n: _array(b"\x62ab", n, 3), None),
    "['é', ...]": (lambda n: _array(_text("é"), n, 3), None),
    "{i: 0 for i in ...} one map": (
        lambda n: b"\xba" + ((n - 5) // 6).to_bytes(4, "big")
        + b"".join(b"\x1a" + i.to_bytes(4, "big") + b"\x00" for i in range((n - 5) // 6)),
        None),
    "[Address, ...] distinct": (lambda n: _array(lambda i: b"\xd9\xc8\x02" + _id_parts(i), n, 29), None),
    "[MailboxID, ...] distinct": (lambda n: _array(lambda i: b"\xd9\xc8\x01" + _id_parts(i), n, 29), None),
    "[MultipleClaim(''), ...]": (
        lambda n: _array(b"\xd9\xc8\x03\x82" + _text("reign.MultipleClaim") + b"\x60", n, 25), None),
    "[MailboxClosed(id), ...]": (
        lambda n: _array(lambda i: b"\xd9\xc8\x03\x82" + _text("reign.MailboxClosed") + b"\xd9\xc8\x01"
                         + _id_parts(i), n, 53), None),
    "bytes (bulk)": (lambda n: b"\x5a" + (n - 5).to_bytes(4, "big") + bytes(n - 5), lambda n: bytes(n - 5)),
    "str ascii": (lambda n: b"\x7a" + (n - 5).to_bytes(4, "big") + b"a" * (n - 5), lambda n: "a" * (n - 5)),
    "str 3-byte chars": (
        lambda n: b"\x7a" + ((n - 5) // 3 * 3).to_bytes(4, "big") + "€".encode() * ((n - 5) // 3),
        lambda n: "€" * ((n - 5) // 3)),
}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(shape: str, max_message_bytes: int) -> dict[str, Any]:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import reign
    from reign._core import codec, messages  # noqa: F401 - registers the library's types
    from reign._core.frames import MESSAGE_OVERHEAD
    from reign._core.inbound import Inbound

    from wire_util import established_pair

    build, value_of = SHAPES[shape]
    payload = build(max_message_bytes)
    assert len(payload) <= max_message_bytes, (shape, len(payload))
    sender, receiver = established_pair(max_frame_bytes=max_message_bytes + MESSAGE_OVERHEAD)
    frame = sender.message(reign.MailboxID(2, receiver.local_incarnation, 5), payload)
    reads = [frame[i:i + READ] for i in range(0, len(frame), READ)]
    del frame
    delivered: list[Any] = []

    class Box:
        deliver = delivered.append

    inbound = Inbound(incarnation=receiver.local_incarnation, lookup={5: Box()}.get,
                      make_address=lambda mid: reign.Address(mid, None))  # type: ignore[arg-type]
    gc.collect()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    outcome = "delivered"
    blocked = 0.0
    try:
        for read in reads:
            started = time.perf_counter()
            try:
                inbound.receive(receiver, read, lambda e: None, lambda c: None)
            finally:
                blocked = max(blocked, time.perf_counter() - started)
    except reign.DecodeError as exc:
        outcome = f"refused: {exc}"
    rss = _status("VmHWM") - before
    started = time.perf_counter()
    delivered.clear()
    free = time.perf_counter() - started
    encode: str = ""
    if value_of is not None:
        value = value_of(max_message_bytes)
        started = time.perf_counter()
        try:
            size = len(codec.encode(value))
            encode = f"{time.perf_counter() - started:.2f} s ({size / MIB:.1f} MiB)"
        except reign.EncodeError as exc:
            encode = f"{time.perf_counter() - started:.2f} s refused ({str(exc)[:28]})"
    return {"payload": len(payload), "outcome": outcome, "blocked": blocked, "free": free, "rss": rss,
            "encode": encode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-message-bytes", type=int, default=None,
                        help="payload size (default: the spec's default max_message_bytes)")
    parser.add_argument("--only", default="", help="comma-separated substrings of shape names")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_message_bytes is None:
        from reign._config.spec import DEFAULT_MAX_MESSAGE_BYTES

        args.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    if args.child:
        print(json.dumps(child(args.child, args.max_message_bytes)))
        return
    wanted = [s for s in args.only.split(",") if s]
    print(f"max_message_bytes {args.max_message_bytes} ({args.max_message_bytes / MIB:g} MiB), "
          f"reads of {READ // 1024} KiB, Python {sys.version.split()[0]}")
    print(f"{'shape':<30} {'payload':>9} {'blocked':>8} {'free':>7} {'RSS':>9}  outcome / encode")
    for shape in SHAPES:
        if wanted and not any(w in shape for w in wanted):
            continue
        out = subprocess.run([sys.executable, __file__, "--child", shape,
                              "--max-message-bytes", str(args.max_message_bytes)],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{shape:<30} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout)
        print(f"{shape:<30} {r['payload'] / MIB:5.1f} MiB {r['blocked']:6.2f} s {r['free']:5.2f} s "
              f"{r['rss'] / MIB:5.0f} MiB  {r['outcome'][:60]}"
              + (f" / encode {r['encode']}" if r["encode"] else ""))


if __name__ == "__main__":
    main()
