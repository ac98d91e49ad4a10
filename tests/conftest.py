"""Shared test configuration: every asyncio test runs on uvloop, as reign's users do.

Fixtures shared by several files (a file may define its own of the same name instead):
``spec`` (a three-node cluster spec in the test's folder) and ``pair`` (nodes 1 and 2 of it,
started and connected; node 3 never starts).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

import reign
from reign.testing import make_cluster


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Any]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return make_cluster(tmp_path, [1, 2, 3])


@pytest.fixture
async def pair(spec: Path) -> AsyncIterator[tuple[reign.Node, reign.Node]]:
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await asyncio.gather(n1.wait_connected(2, timeout=20), n2.wait_connected(1, timeout=20))
        yield n1, n2
