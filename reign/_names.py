"""Placeholder until the registry lands (issue 5)."""

from __future__ import annotations

from typing import Any


class Names:
    def __init__(self, node: Any) -> None:
        self._node = node
