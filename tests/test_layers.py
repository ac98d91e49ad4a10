"""The layering is real: the sans-IO core loads no I/O, and the guard that says so can fail.

Each module of ``reign._core`` (found by walking the package, so a new module is covered the
day it is added) is imported alone in a fresh interpreter, and ``sys.modules`` is checked for
asyncio, ssl, socket, selectors, structlog, uvloop, pickle and reign's other layers. Then the
same check is run on a copy of the package with ``import asyncio`` added to one core module, and
must fail: a guard that cannot fail guards nothing.
"""

from __future__ import annotations

import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import reign._core

ROOT = Path(__file__).resolve().parent.parent

#: What no sans-IO module may load, directly or through anything it imports.
FORBIDDEN = (
    "asyncio", "ssl", "socket", "selectors", "structlog", "uvloop", "pickle",
    "reign._runtime", "reign._config", "reign._otp",
)

CORE_MODULES = sorted(
    ["reign._core", "reign._errors"]
    + [info.name for info in pkgutil.walk_packages(reign._core.__path__, "reign._core.")]
)

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
forbidden = sys.argv[2:]
print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))))
"""


def forbidden_imports(module: str, path: Path = ROOT) -> list[str]:
    """The forbidden modules present after importing ``module`` alone in a fresh interpreter
    whose ``reign`` package is the one in ``path``."""
    env = dict(os.environ, PYTHONPATH=str(path))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *FORBIDDEN],
        capture_output=True, text=True, env=env, cwd=path, timeout=60, check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_the_core_has_the_modules_the_architecture_names() -> None:
    for name in ("ids", "address", "messages", "codec", "codec.encoder", "codec.decoder",
                 "codec.scan", "codec.types", "frames", "protocol", "inbound", "monitors", "registry",
                 "registry_wire"):
        assert f"reign._core.{name}" in CORE_MODULES


@pytest.mark.parametrize("module", CORE_MODULES)
def test_sans_io_module_loads_no_io_and_no_other_layer(module: str) -> None:
    assert forbidden_imports(module) == []


def test_the_guard_fails_when_a_core_module_imports_asyncio(tmp_path: Path) -> None:
    copy = tmp_path / "reign"
    shutil.copytree(ROOT / "reign", copy, ignore=shutil.ignore_patterns("__pycache__"))
    frames = copy / "_core" / "frames.py"
    frames.write_text(frames.read_text() + "\nimport asyncio  # the mistake the guard exists for\n")
    assert forbidden_imports("reign._core.frames", ROOT) == []  # the real one is clean
    assert "asyncio" in forbidden_imports("reign._core.frames", tmp_path)
    # and through any module that imports the broken one
    assert "asyncio" in forbidden_imports("reign._core.protocol", tmp_path)


def test_importing_reign_loads_nothing_until_a_name_is_used() -> None:
    probe = (
        "import sys, reign; loaded = sorted(m for m in sys.modules if m.startswith('reign.')); "
        "print(loaded, 'asyncio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[] False"
