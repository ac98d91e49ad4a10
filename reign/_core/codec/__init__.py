"""The strict CBOR message codec: what crosses between nodes, and nothing else (sans-IO).

One module per idea: :mod:`.model` (the value model, wire tags, limits), :mod:`.types` (the
registry of user types, with optional field checks), :mod:`.encoder`, :mod:`.decoder` (one
payload, or a read's payloads in place) and :mod:`.scan` (the structural pre-scan, item count,
memory estimate and composite map keys of large payloads). This package imports no asyncio,
ssl, socket or structlog.
"""

from .decoder import ADDRESS_CACHE_SIZE, BatchDecoder, decode
from .encoder import encode
from .model import (
    COLLISION_CHECK_KEYS,
    MAX_CBOR_DEPTH,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_KEY_COLLISIONS,
    MEMORY_FACTOR,
    SCAN_THRESHOLD,
)
from .types import register_type

__all__ = [
    "ADDRESS_CACHE_SIZE",
    "BatchDecoder",
    "COLLISION_CHECK_KEYS",
    "MAX_CBOR_DEPTH",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_KEY_COLLISIONS",
    "MEMORY_FACTOR",
    "SCAN_THRESHOLD",
    "decode",
    "encode",
    "register_type",
]
