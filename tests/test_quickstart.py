"""The README's quick start (``make demo`` = ``python -m reign_sample.quickstart``), run
non-interactively: a line piped into node 1 must be printed by node 2, and both must leave."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from .cluster_util import ROOT, free_ports
except ImportError:  # tests/ is not a package: pytest's rootdir-relative import
    from cluster_util import ROOT, free_ports  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

#: Seconds for a whole demo run: two interpreters, TLS, one line, two clean exits.
DEMO_TIMEOUT = 45
PACKAGES = ("reign", "reign_init", "reign_sample")


def run_quickstart(cwd: Path, *args: str, text: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reign_sample.quickstart", *args],
        input=text, capture_output=True, text=True, cwd=cwd, env=env, timeout=DEMO_TIMEOUT,
    )


def check_demo(result: subprocess.CompletedProcess[str], line: str) -> list[str]:
    out = result.stdout.splitlines()
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert f"[node 2] Received: {line} (from node 1)" in out, shown
    assert "[node 2] Bye!" in out, shown  # node 2 was stopped cleanly, not killed
    assert "Bye!" in out, shown  # node 1 left at end of input
    return out


def test_quickstart_on_a_fresh_clone(tmp_path: Path) -> None:
    """The packages alone, no certs/, the default ports: exactly what ``make demo`` meets."""
    clone = tmp_path / "clone"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, clone / package, ignore=shutil.ignore_patterns("__pycache__"))
    for port in (20000, 20001):  # the ports reign_init's cluster.json uses
        with socket.socket() as probe:
            # SO_REUSEADDR as the node sets it: TIME_WAIT leftovers of an earlier run are fine.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pytest.fail(f"port {port} is in use (a demo running?); the quick start needs it")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run_quickstart(clone, text="hello from the quick start\n", env=env)
    out = check_demo(result, "hello from the quick start")
    assert any(line.startswith("Creating certificates in certs") for line in out), out
    for name in ("cluster.json", "reign_ca.crt", "reign_node.1.key", "reign_node.2.key"):
        assert (clone / "certs" / name).exists()


def test_quickstart_reuses_existing_certificates(tmp_path: Path) -> None:
    certs = tmp_path / "my certs"
    subprocess.run(
        [sys.executable, "-m", "reign_init", "--dir", str(certs), "--nodes", "2"],
        check=True, capture_output=True, cwd=ROOT, timeout=60,
    )
    spec = json.loads((certs / "cluster.json").read_text())
    for entry, port in zip(spec["nodes"], free_ports(2)):
        entry["address"] = f"127.0.0.1:{port}"
    (certs / "cluster.json").write_text(json.dumps(spec))
    before = {path.name: path.read_bytes() for path in certs.iterdir()}

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = run_quickstart(tmp_path, "--certs-dir", str(certs), text="first\nsecond\n", env=env)
    out = check_demo(result, "first")
    assert "[node 2] Received: second (from node 1)" in out
    assert f"Using the certificates in {certs}/" in out
    assert {path.name: path.read_bytes() for path in certs.iterdir()} == before


def test_quickstart_reports_a_node_that_cannot_start(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    subprocess.run(
        [sys.executable, "-m", "reign_init", "--dir", str(certs), "--nodes", "2"],
        check=True, capture_output=True, cwd=ROOT, timeout=60,
    )
    spec = json.loads((certs / "cluster.json").read_text())
    ports = free_ports(2)
    for entry, port in zip(spec["nodes"], ports):
        entry["address"] = f"127.0.0.1:{port}"
    (certs / "cluster.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with socket.socket() as squatter:  # node 2's port is taken
        squatter.bind(("127.0.0.1", ports[1]))
        squatter.listen()
        result = run_quickstart(tmp_path, "--certs-dir", str(certs), text="", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert any(
        line.startswith("[node 2] reign_sample: node 2 cannot listen") for line in result.stdout.splitlines()
    ), result.stdout
    assert result.stderr.strip() == "reign_sample.quickstart: node 2 did not start; see its message above"
