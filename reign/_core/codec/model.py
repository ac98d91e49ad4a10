"""The strict CBOR codec's value model, wire tags and limits (shared by every codec module).

The codec package is sans-IO: it imports no asyncio, ssl, socket or structlog.

Value model (:func:`encode` accepts exactly these, :func:`decode` returns nothing else):
``None``, ``bool``, ``int`` in ``-2**64 <= x < 2**64`` (CBOR major types 0/1 only, never
bignum tags), ``float``, ``str``, ``bytes`` (``bytearray`` is sent as bytes), ``list``,
``tuple``, ``dict`` (keys: any supported hashable value), :class:`~reign.Address`,
:class:`~reign.MailboxID` and instances of classes registered with :func:`register_type`.
Types are matched exactly: a subclass of ``int``/``str``/``dict``/... (an ``IntEnum``, an
``OrderedDict``, a ``NamedTuple``) is refused unless registered itself. Nothing is pickled.

Wire form: plain CBOR (RFC 8949) with four private tags of ours, taken from IANA's
first-come-first-served range (unregistered; meaningful only between reign nodes):

========================  ======  ============================================================
value                      tag     content
========================  ======  ============================================================
tuple                      51200   array of the items
MailboxID                  51201   array ``[node, incarnation, serial]``
Address                    51202   array ``[node, incarnation, serial]``
registered object          51203   array ``[name, field values...]`` (dataclasses: field order)
========================  ======  ============================================================

Decoder invariants (every failure is :class:`~reign.DecodeError` with a short reason; no other
exception escapes :func:`decode` for bytes-like input):

* only the four tags above (cbor2's built-in tags — 0/1 datetimes, 2/3 bignums, 28/29 shared
  references, 35 regex, 36 MIME, 256/25 string references, 258 sets, 55799 self-describe, ... —
  are all refused, through a ``semantic_decoders`` mapping whose lookup raises for any other
  tag); no simple values or ``undefined`` (in small payloads the decoded value is walked for
  them, only when one of their initial bytes occurs at all); no indefinite lengths; no
  duplicate map keys; no map used as a map key; no trailing bytes;
* nesting at most :data:`MAX_CBOR_DEPTH` CBOR levels (arrays, maps and tags each count one);
* a CBOR array in map-key position decodes as a tuple (cbor2 decodes keys immutably). This is
  the one non-canonical form accepted: it yields exactly the value a tagged tuple would.
* size: at most :data:`MAX_ITEMS` data items below the top level (every array element, map
  key and value, and tag content);
* memory: payloads over :data:`SCAN_THRESHOLD` bytes are first walked header by header in pure
  Python (:func:`~.scan.scan`, no objects built), which stops at the first container head past
  :data:`MAX_ITEMS` and refuses a payload whose Python objects are estimated (from CPython 3.11
  object sizes, checked by the tests with tracemalloc) to exceed :data:`MEMORY_FACTOR` bytes per
  payload byte. So decoding ``n`` bytes builds at most ~``MEMORY_FACTOR * n`` bytes of objects,
  and, whatever ``n``, at most MAX_ITEMS small objects besides the content of strings and byte
  strings (measured: under 50 MiB); 1 MiB of empty arrays (65 bytes each) or empty maps (72)
  is refused before anything is built. Smaller payloads cannot amplify past ~72 x 4 KiB.
* time: payloads over SCAN_THRESHOLD with more than :data:`COLLISION_CHECK_KEYS` composite
  map keys (arrays and tags in key position) have those keys decoded and hashed first, and
  are refused when more than :data:`MAX_KEY_COLLISIONS` distinct keys share a hash value (the
  hashes of tuples of ints can be solved for, and a dict of colliding keys takes quadratic
  time to build). So decoding is linear in the payload, apart from cbor2's own work.
* :func:`encode` refuses (``EncodeError``) any message the decoder would refuse, so a sender
  learns of it instead of its peer dropping the connection. (Hash values differ between
  processes only for keys holding str, bytes or None, which cannot be made to collide, so both
  sides agree on hash flooding too.)
* a registered class declared with ``check_fields=True`` (the library's messages are) arrives
  only with fields of its annotated types (see :mod:`.types`).

Registry: :func:`register_type` is process-global (like Go's ``gob.Register``); the registered
name, not the Python class path, identifies the class on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..address import Address
from ..ids import MailboxID

__all__ = [
    "MAX_DEPTH",
    "MAX_CBOR_DEPTH",
    "MAX_ITEMS",
    "SCAN_THRESHOLD",
    "MEMORY_FACTOR",
    "COLLISION_CHECK_KEYS",
    "MAX_KEY_COLLISIONS",
    "KeyGuard",
    "key_collisions",
    "TAG_TUPLE",
    "TAG_MAILBOX_ID",
    "TAG_ADDRESS",
    "TAG_OBJECT",
    "INT_MIN",
    "INT_LIMIT",
    "LEAVES",
    "BUILTIN_TYPES",
    "SCALAR_KEYS",
]

#: Deepest nesting of containers (list, tuple, dict, registered object) a message may have;
#: the top-level container is level 1. Erlang's external term format has no such limit, but
#: the receiving decoder needs one (cbor2's Rust code recurses on the C stack: it crashed the
#: process, SIGSEGV, somewhere between 1,000 and 10,000 levels when it still encoded for us),
#: and both the encoder here and the receiver's checks recurse once per level; 64 is far
#: beyond any real message shape and keeps every recursion in this module shallow.
MAX_DEPTH = 64

#: Deepest CBOR nesting :func:`decode` accepts (cbor2 counts non-empty arrays, non-empty maps
#: and tags): a tuple or registered object is a tag plus an array (2 levels), and an Address or
#: MailboxID at the bottom adds 2 more, so the deepest encodable message needs 2*64+2.
MAX_CBOR_DEPTH = 2 * MAX_DEPTH + 2

#: Most CBOR data items one message may hold below its top level: every array element, every
#: map key and map value, and the content of every tag. So a list or tuple of n values counts n
#: (a tuple 1 more, for its tag's array), a dict of n entries 2n, a registered object its fields
#: plus 2 (the tag's array and the name), an Address or MailboxID 4 (the tag's array and its 3
#: ints), each besides the item it is in its container; a str or bytes is one item at any length.
#: :func:`encode` refuses a message over it (EncodeError), and the receiver's pre-scan refuses
#: (DecodeError) at the first container head that goes past it, before anything is built; a
#: payload of n bytes holds fewer than n items, so payloads up to SCAN_THRESHOLD never reach it.
#:
#: Why 2**19: a message is decoded in one go on the receiving node's event loop, and the dearest
#: items cost ~0.5 us each there (pre-scan 0.2-0.3 us per head, cbor2, Python calls for tags, the
#: cyclic GC scanning what was built). Measured by ``bench/decode_bounds.py`` (2 vCPU, CPython
#: 3.11, default 16 MiB max_message_bytes, a shared machine): the dearest accepted messages,
#: distinct addresses or library messages up to the cap, block the loop 0.25-0.4 s and cost
#: +9 to +22 MiB RSS; records ``[{"ab": 0}, ...]`` up to the cap 0.16 s and +45 MiB (the most
#: memory of any shape); 16 MiB of them is refused in 0.01 s, +16 MiB (the frame itself).
#: (Before, 4 Mi items were counted by the encoder only, and 16 MiB of ``[{"ab": 0}, ...]``
#: was delivered after 3.7 s of blocked loop and +865 MiB RSS; 16 MiB of ``[[0], ...]`` 5.9 s.)
#: It also stops the encoder's walk of a DAG that reuses a sublist (exponentially larger than
#: its object graph) within ~0.1 s. Bulk data belongs in ``bytes`` or ``str``.
MAX_ITEMS = 1 << 19

#: Payloads larger than this are scanned (:func:`_scan`) before decoding. Below it the worst
#: amplification (empty maps, 72 bytes of objects per byte) stays under 300 KiB, and skipping
#: the pure-Python scan keeps small messages at cbor2's speed.
SCAN_THRESHOLD = 4096

#: Largest estimated decoded size per payload byte. Measured with tracemalloc on CPython 3.11
#: (see tests): empty arrays cost 65 bytes per byte, empty maps 72, one-entry maps with a
#: 2-letter key ~57, pairs ``[1, 2]`` 32, records of three short fields ~19, small ints 8.
#: 60 refuses the pure "empty containers" bombs while accepting every realistic shape.
MEMORY_FACTOR = 60

#: Composite map keys (tuples, addresses, ids, registered objects: an array or a tag in key
#: position) a message may hold before their hash values are checked. Python randomises the
#: hashes of str and bytes but not of ints, so an attacker can solve for tuples of ints (and
#: ids, whose hash is their fields' tuple's) that all share one hash value: building a dict of
#: n such keys then costs n**2/2 key comparisons. Measured here before the check: 16,000
#: colliding pairs (219 KiB) blocked decoding for 3.2 s, and the MAX_ITEMS cap allows 131,072
#: (~200 s, extrapolated). Up to 16 keys, even all colliding and each as large as MAX_ITEMS
#: allows, cost at most 120 key comparisons (measured: 0.02 s for keys of 32k ints, 0.07 s for
#: keys of 6.5k MailboxIDs, whose == is Python code); past 16, each key is hashed first.
COLLISION_CHECK_KEYS = 16
#: Most distinct composite map keys of one message that may share a hash value. Natural
#: collisions are rare and small (hash(-1) == hash(-2), so (-1, 0) and (-2, 0) collide); 8
#: bounds each dict insertion to 8 comparisons, so building the dicts stays linear.
MAX_KEY_COLLISIONS = 8

TAG_TUPLE = 51200
TAG_MAILBOX_ID = 51201
TAG_ADDRESS = 51202
TAG_OBJECT = 51203

INT_MIN = -(1 << 64)
INT_LIMIT = 1 << 64

NoneType = type(None)
#: Exact types that contain nothing to check (Address and MailboxID are valid by construction).
LEAVES = frozenset({NoneType, bool, float, str, bytes, bytearray, Address, MailboxID})
#: Types register_type refuses: the codec already has a meaning for them.
BUILTIN_TYPES = frozenset({*LEAVES, int, list, tuple, dict})
#: Map key types that are not composite (their hash collisions are bounded or seeded).
SCALAR_KEYS = frozenset({NoneType, bool, int, float, bytes})


class KeyGuard:
    """The hash-flooding check of one message's composite map keys, fed one key at a time.

    The first COLLISION_CHECK_KEYS keys are only kept; from the next one on, every key (those
    kept included) is bucketed by hash value, and :meth:`add` returns why the message is
    refused once more than MAX_KEY_COLLISIONS distinct keys share one. Linear: each key is
    hashed once and compared with at most MAX_KEY_COLLISIONS others. ``add`` raises what
    ``hash`` or ``==`` of a key raises (an unhashable registered object).
    """

    __slots__ = ("_kept", "_buckets")

    def __init__(self) -> None:
        self._kept: list[Any] = []
        self._buckets: dict[int, list[Any]] | None = None  # int keys: collide at most ~4 ways

    def add(self, key: Any) -> str | None:
        buckets = self._buckets
        if buckets is None:
            kept = self._kept
            kept.append(key)
            if len(kept) <= COLLISION_CHECK_KEYS:
                return None
            self._buckets = buckets = {}
            self._kept = []
            keys: Iterable[Any] = kept
        else:
            keys = (key,)
        for one in keys:
            h = hash(one)
            bucket = buckets.get(h)
            if bucket is None:
                buckets[h] = [one]
                continue
            for other in bucket:
                if other is one or other == one:
                    break
            else:
                if len(bucket) >= MAX_KEY_COLLISIONS:
                    return f"more than {MAX_KEY_COLLISIONS} distinct map keys share one hash value (hash flooding)"
                bucket.append(one)
        return None


def key_collisions(keys: Iterable[Any]) -> str | None:
    """Why the composite map keys ``keys`` of one message are hash flooding, or None (see
    :class:`KeyGuard`: nothing is checked for COLLISION_CHECK_KEYS keys or fewer)."""
    guard = KeyGuard()
    for key in keys:
        reason = guard.add(key)
        if reason is not None:
            return reason
    return None
