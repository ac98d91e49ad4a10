"""The rules every name follows, local or global (sans-IO).

A name is a non-empty ``str`` of at most :data:`MAX_NAME_BYTES` UTF-8 bytes (no lone
surrogates). A ``str`` subclass (a ``StrEnum`` member, ...) is accepted and used as its text.
Erlang's registered names are atoms of at most 255 characters; 512 bytes allows as much for
mostly-ASCII text while one name with its framing always fits the smallest frame a spec
allows (``max_message_bytes`` of 1 KiB).
"""

from __future__ import annotations

__all__ = ["MAX_NAME_BYTES", "checked_name", "name_bytes"]

#: Longest name, in UTF-8 bytes.
MAX_NAME_BYTES = 512


def checked_name(name: object) -> str:
    """``name`` as a plain str; ValueError saying which rule it breaks."""
    name_bytes(name)
    return str.__str__(name)  # type: ignore[arg-type,unused-ignore]


def name_bytes(name: object) -> bytes:
    """The UTF-8 bytes of a valid name; ValueError saying which rule it breaks."""
    if not isinstance(name, str):
        raise ValueError(f"a name is a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a name cannot be empty")
    try:
        raw = str.__str__(name).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"a name must be encodable as UTF-8 (no lone surrogates): {name[:80]!r}") from None
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"a name is at most {MAX_NAME_BYTES} UTF-8 bytes, this one is {len(raw)}")
    return raw
