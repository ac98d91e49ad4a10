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

Each shape whose full-size payload has more items than MAX_ITEMS gets a second row, ``at
MAX_ITEMS``: the largest such payload the receiver accepts (the dearest accepted messages).
One shape is hash flooding (16,000 int pairs sharing one hash value as keys of one map): it
is kept small because before the fix it cost seconds at 219 KiB and minutes at the item cap.

Run: ``.venv/bin/python bench/decode_bounds.py [--max-message-bytes N] [--only a,b]``. Shapes
run one after the other (one core), ~1-2 minutes in all.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reign._core.codec import encode
from reign._core.ids import MailboxID
from reign._core.messages import MailboxClosed

READ = 256 * 1024
MIB = 1 << 20


def _array(unit: Callable[[int], bytes] | bytes, count: int) -> bytes:
    """A CBOR array of ``count`` items, ``unit`` itself or ``unit(i)`` for the i-th."""
    head = b"\x9a" + count.to_bytes(4, "big")
    if isinstance(unit, bytes):
        return head + unit * count
    return head + b"".join(unit(i) for i in range(count))


def _id_parts(i: int) -> bytes:  # [node 3, incarnation 2**62 + i, serial i] as our encoder writes ids
    return b"\x83\x18\x03\x1b" + (2**62 + i).to_bytes(8, "big") + b"\x1b" + i.to_bytes(8, "big")


def _text(s: str) -> bytes:
    data = s.encode()
    assert len(data) < 24
    return bytes([0x60 | len(data)]) + data


def _map(count: int) -> bytes:  # {i: 0 for i in range(count)}, keys as 4-byte uints
    return b"\xba" + count.to_bytes(4, "big") + b"".join(b"\x1a" + i.to_bytes(4, "big") + b"\x00"
                                                         for i in range(count))


@dataclass(frozen=True)
class Shape:
    """A payload of ``count`` repetitions of a unit of ``unit_bytes`` wire bytes and ``unit_items``
    data items (as MAX_ITEMS counts them: the unit and everything in it)."""

    build: Callable[[int], bytes]  # count -> payload (at most count * unit_bytes + 9 bytes)
    unit_bytes: int
    unit_items: int
    value: Callable[[int], Any] | None = None  # count -> the same message as a Python value
    max_count: int | None = None  # a shape that would take minutes before the fix is kept smaller

    def count(self, size: int, max_items: int | None) -> int:
        count = (size - 9) // self.unit_bytes
        if self.max_count is not None:
            count = min(count, self.max_count)
        return count if max_items is None else min(count, max_items // self.unit_items)


def _units(unit: Callable[[int], bytes] | bytes, items: int, value: Callable[[int], Any] | None = None) -> Shape:
    size = len(unit if isinstance(unit, bytes) else unit(0))
    return Shape(lambda count: _array(unit, count), size, items, value)


def _mailbox_closed(i: int) -> bytes:
    return encode(MailboxClosed(MailboxID(3, 2**62 + i, i)))


def _colliding_map(count: int) -> bytes:
    """{(a, b): 0, ...} with ``count`` pairs of ints that share one hash value (hash flooding)."""
    import cbor2

    from hashflood_util import colliding_pairs  # tests/, on sys.path in the child

    return b"\xba" + count.to_bytes(4, "big") + b"".join(cbor2.dumps(list(p)) + b"\x00" for p in colliding_pairs(count))


def _blob(major: int, char: bytes, value: Callable[[int], Any]) -> Shape:
    """One byte or text string of ``count`` repetitions of ``char``."""
    return Shape(lambda count: bytes([major << 5 | 26]) + (count * len(char)).to_bytes(4, "big") + char * count,
                 len(char), 0, value)


SHAPES: dict[str, Shape] = {
    "[{'ab': 0}, ...] (issue)": _units(b"\xa1\x62ab\x00", 3, lambda n: [{"ab": 0} for _ in range(n)]),
    "[[0], ...]": _units(b"\x81\x00", 2, lambda n: [[0] for _ in range(n)]),
    "[[0, 0], ...]": _units(b"\x82\x00\x00", 3),
    "[[], ...]": _units(b"\x80", 1, lambda n: [[] for _ in range(n)]),
    "[{}, ...]": _units(b"\xa0", 1),
    "[(), ...]": _units(b"\xd9\xc8\x00\x80", 2),
    "[0, ...] small ints": _units(b"\x00", 1, lambda n: [0] * n),
    "[-20, ...] uncached ints": _units(b"\x33", 1, lambda n: [-20] * n),
    "[2**40, ...] big ints": _units(b"\x1b" + (2**40).to_bytes(8, "big"), 1),
    "[1.5, ...] floats": _units(b"\xfb?\xf8\x00\x00\x00\x00\x00\x00", 1),
    "['ab', ...]": _units(b"\x62ab", 1),
    "['é', ...]": _units(_text("é"), 1),
    "{i: 0 for i in ...} one map": Shape(_map, 6, 2),
    "{colliding pair: 0} (16k keys)": Shape(_colliding_map, 14, 4, max_count=16_000),
    "[Address, ...] distinct": _units(lambda i: b"\xd9\xc8\x02" + _id_parts(i), 5),
    "[MailboxID, ...] distinct": _units(lambda i: b"\xd9\xc8\x01" + _id_parts(i), 5),
    "[MultipleClaim(''), ...]": _units(b"\xd9\xc8\x03\x82" + _text("reign.MultipleClaim") + b"\x60", 4),
    # the slot, the tag's array, the name, each field, the id's 4 (any other field is a leaf)
    "[MailboxClosed(id), ...]": _units(_mailbox_closed, 3 + len(dataclasses.fields(MailboxClosed)) + 4),
    "bytes (bulk)": _blob(2, b"\x00", bytes),
    "str ascii": _blob(3, b"a", lambda n: "a" * n),
    "str 3-byte chars": _blob(3, "€".encode(), lambda n: "€" * n),
}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(name: str, max_message_bytes: int, max_items: int | None) -> dict[str, Any]:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import reign
    from reign._core import codec, messages  # noqa: F401 - registers the library's types
    from reign._core.frames import MESSAGE_OVERHEAD
    from reign._core.inbound import Inbound

    from wire_util import established_pair

    shape = SHAPES[name]
    count = shape.count(max_message_bytes, max_items)
    payload = shape.build(count)
    assert len(payload) <= max_message_bytes, (name, len(payload))
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
    encode = ""
    if shape.value is not None:
        value = shape.value(count)
        started = time.perf_counter()
        try:
            size = len(codec.encode(value))
            encode = f"{time.perf_counter() - started:.2f} s ({size / MIB:.1f} MiB)"
        except reign.EncodeError as exc:
            encode = f"{time.perf_counter() - started:.2f} s, refused ({str(exc)[:24]})"
    return {"payload": len(payload), "outcome": outcome, "blocked": blocked, "free": free, "rss": rss,
            "encode": encode}


def _max_items() -> int | None:
    from reign._core.codec import model

    return getattr(model, "MAX_ITEMS", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-message-bytes", type=int, default=None,
                        help="payload size (default: the spec's default max_message_bytes)")
    parser.add_argument("--only", default="", help="comma-separated substrings of shape names")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_message_bytes is None:
        from reign._config.spec import DEFAULT_MAX_MESSAGE_BYTES

        args.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    if args.child:
        print(json.dumps(child(args.child, args.max_message_bytes, args.items)))
        return
    wanted = [s for s in args.only.split(",") if s]
    max_items = _max_items()
    print(f"max_message_bytes {args.max_message_bytes} ({args.max_message_bytes / MIB:g} MiB), "
          f"MAX_ITEMS {max_items}, reads of {READ // 1024} KiB, Python {sys.version.split()[0]}")
    print(f"{'shape':<34} {'payload':>9} {'blocked':>8} {'free':>7} {'RSS':>9}  outcome / encode")
    for name, shape in SHAPES.items():
        if wanted and not any(w in name for w in wanted):
            continue
        rows = [(name, None)]
        if shape.unit_items and max_items and shape.count(args.max_message_bytes, max_items) < shape.count(
                args.max_message_bytes, None):
            rows.append((f"  at MAX_ITEMS ({shape.unit_items}/unit)", max_items))
        for label, items in rows:
            command = [sys.executable, __file__, "--child", name, "--max-message-bytes", str(args.max_message_bytes)]
            if items is not None:
                command += ["--items", str(items)]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            if out.returncode:
                print(f"{label:<34} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout)
            print(f"{label:<34} {r['payload'] / MIB:5.1f} MiB {r['blocked']:6.2f} s {r['free']:5.2f} s "
                  f"{r['rss'] / MIB:5.0f} MiB  {r['outcome'][:56]}"
                  + (f" / encode {r['encode']}" if r["encode"] else ""))


if __name__ == "__main__":
    main()
