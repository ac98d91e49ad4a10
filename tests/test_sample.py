"""reign_sample, the chat demo, driven as real processes over real TLS on loopback.

The certificates come from ``python -m reign_init --dir TMP --nodes 3`` (once per module); each
test writes its own spec beside them, for the nodes it needs, on ports the kernel just handed
out, so tests never clash with each other or with a demo running on the default ports.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from .cluster_util import ROOT, free_ports
except ImportError:  # tests/ is not a package: pytest's rootdir-relative import
    from cluster_util import ROOT, free_ports  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

#: Seconds to wait for one expected line; generous for a loaded CI machine, and only ever
#: spent in full when the test is failing.
LINE_TIMEOUT = 20.0
#: Seconds a chatter may take to leave after its input closes (its bounded leave steps).
EXIT_TIMEOUT = 20.0


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "reign_sample", *args]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sample") / "certs"
    subprocess.run(
        [sys.executable, "-m", "reign_init", "--dir", str(folder), "--nodes", "3"],
        check=True, capture_output=True, env=_env(), timeout=60,
    )
    return folder


_spec_serial = iter(range(1_000_000))


def spec_for(certs: Path, ids: list[int]) -> Path:
    """reign_init's cluster.json narrowed to ``ids``, on free ports, beside the certificates."""
    data = json.loads((certs / "cluster.json").read_text())
    ports = dict(zip(ids, free_ports(len(ids))))
    data["nodes"] = [
        {**entry, "address": f"127.0.0.1:{ports[entry['id']]}"}
        for entry in data["nodes"]
        if entry["id"] in ports
    ]
    path = certs / f"cluster-{next(_spec_serial)}.json"
    path.write_text(json.dumps(data))
    return path


class Chatter:
    """A ``reign_sample N`` process: we type into its stdin and watch its stdout."""

    def __init__(self, node_id: int, spec: Path, *extra: str) -> None:
        self.node_id = node_id
        self.proc = subprocess.Popen(
            _command(str(node_id), "--spec", str(spec), *extra),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=_env(), cwd=ROOT,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.changed = threading.Condition()
        self.readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _pump(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self.changed:
                into.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def expect(self, text: str, timeout: float = LINE_TIMEOUT) -> str:
        """The first stdout line containing ``text``, waiting for it to be printed."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reading()):
                    raise AssertionError(
                        f"node {self.node_id} did not print {text!r}; stdout: {self.lines}; "
                        f"stderr: {self.errors}"
                    )
                self.changed.wait(min(left, 0.1))

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self.readers)

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        """Close its input (end of input) and wait for it to exit; its exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        status = self.proc.wait(EXIT_TIMEOUT)
        for reader in self.readers:
            reader.join(EXIT_TIMEOUT)
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT)

    def assert_clean_exit(self) -> None:
        assert self.finish() == 0, self.errors
        assert self.lines[-1] == "Bye!", self.lines
        assert not any("Traceback" in line for line in self.lines + self.errors), self.errors


@pytest.fixture
def chatters() -> Iterator[list[Chatter]]:
    started: list[Chatter] = []
    yield started
    for chatter in started:
        chatter.kill()


def start(chatters: list[Chatter], node_id: int, spec: Path, *extra: str) -> Chatter:
    chatter = Chatter(node_id, spec, *extra)
    chatters.append(chatter)
    chatter.expect(f"Node {node_id} listening on")
    return chatter


# --------------------------------------------------------------------------- chatting


def test_two_nodes_chat_both_ways_and_leave_at_end_of_input(
    certs: Path, chatters: list[Chatter]
) -> None:
    spec = spec_for(certs, [1, 2])
    one = start(chatters, 1, spec)
    two = start(chatters, 2, spec)
    one.expect("Node 2 joined")
    two.expect("Node 1 joined")
    one.type("hello from one")
    two.expect("Received: hello from one (from node 1)")
    two.type("hi from two")
    two.type("how are you?")
    one.expect("Received: hi from two (from node 2)")
    one.expect("Received: how are you? (from node 2)")
    received = [line for line in one.lines if line.startswith("Received:")]
    assert received == ["Received: hi from two (from node 2)", "Received: how are you? (from node 2)"]

    one.assert_clean_exit()
    two.expect("Node 1 left")
    two.assert_clean_exit()


def test_three_nodes_each_line_reaches_every_other_node(
    certs: Path, chatters: list[Chatter]
) -> None:
    spec = spec_for(certs, [1, 2, 3])
    nodes = {n: start(chatters, n, spec) for n in (1, 2, 3)}
    for n, chatter in nodes.items():
        for other in nodes:
            if other != n:
                chatter.expect(f"Node {other} joined")
    for n, chatter in nodes.items():
        chatter.type(f"greetings from {n}")
    for n, chatter in nodes.items():
        for other in nodes:
            if other != n:
                chatter.expect(f"Received: greetings from {other} (from node {other})")
    for chatter in nodes.values():
        chatter.assert_clean_exit()
    for chatter in nodes.values():
        # Each got exactly one line from each other node: nothing doubled, nothing echoed.
        assert len([line for line in chatter.lines if line.startswith("Received:")]) == 2


def test_a_line_typed_before_the_peer_is_up_is_delivered_when_it_joins(
    certs: Path, chatters: list[Chatter]
) -> None:
    spec = spec_for(certs, [1, 2])
    one = start(chatters, 1, spec)
    one.type("early bird")
    one.type("second worm")
    one.expect("Node 2 is not in the chat yet")
    two = start(chatters, 2, spec)
    two.expect("Received: early bird (from node 1)")
    two.expect("Received: second worm (from node 1)")
    one.expect("Delivered 2 queued messages to node 2")
    received = [line for line in two.lines if line.startswith("Received:")]
    assert received == [
        "Received: early bird (from node 1)",
        "Received: second worm (from node 1)",
    ]
    one.assert_clean_exit()
    two.assert_clean_exit()


def test_a_node_leaving_and_coming_back_is_shown_and_gets_what_it_missed(
    certs: Path, chatters: list[Chatter]
) -> None:
    spec = spec_for(certs, [1, 2])
    one = start(chatters, 1, spec)
    first = start(chatters, 2, spec)
    one.expect("Node 2 joined")
    first.kill()  # no goodbye: the connection just drops
    one.expect("Node 2 left")
    one.type("are you back?")
    one.expect("Node 2 is not in the chat yet")
    second = start(chatters, 2, spec)
    second.expect("Received: are you back? (from node 1)")
    assert len([line for line in one.lines if line == "Node 2 joined"]) == 2
    one.assert_clean_exit()
    second.assert_clean_exit()


def test_piped_input_is_delivered_before_exit(certs: Path, chatters: list[Chatter]) -> None:
    """``echo hi | reign_sample 1`` while node 2 runs: input ends at once, yet "hi" arrives."""
    spec = spec_for(certs, [1, 2])
    two = start(chatters, 2, spec)
    result = subprocess.run(
        _command("1", "--spec", str(spec)), input="hi\nthere\n",
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=EXIT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Bye!"
    assert "Not delivered" not in result.stdout
    two.expect("Received: hi (from node 1)")
    two.expect("Received: there (from node 1)")
    two.assert_clean_exit()


def test_lines_that_could_not_be_delivered_are_reported_at_exit(certs: Path) -> None:
    spec = spec_for(certs, [1, 2])
    result = subprocess.run(
        _command("1", "--spec", str(spec), "--linger", "0.3"), input="anyone there?\n",
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=EXIT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Not delivered to node 2: anyone there?" in lines
    assert lines[-1] == "Bye!"


# --------------------------------------------------------------------------- errors


def fails(*args: str, cwd: Path = ROOT, status: int = 1) -> str:
    """Run ``reign_sample ARGS``; expect ``status``, one stderr line, no traceback; the line."""
    result = subprocess.run(
        _command(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=_env(), cwd=cwd, timeout=EXIT_TIMEOUT,
    )
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reign_sample: ")
    return lines[0]


def test_missing_certificates_name_the_reign_init_command(tmp_path: Path) -> None:
    line = fails("1", cwd=tmp_path)  # the default spec, certs/cluster.json, is absent
    assert "run reign_init first: reign_init --dir certs --nodes 2" in line
    line = fails("3", "--spec", str(tmp_path / "mine" / "cluster.json"))
    assert f"run reign_init first: reign_init --dir {tmp_path / 'mine'} --nodes 3" in line


def test_a_missing_key_file_names_the_file_and_the_fix(certs: Path, tmp_path: Path) -> None:
    partial = tmp_path / "certs"
    partial.mkdir()
    for name in ("cluster.json", "reign_ca.crt", "reign_node.1.crt"):
        shutil.copy(certs / name, partial / name)
    line = fails("1", "--spec", str(partial / "cluster.json"))
    assert f"{partial / 'reign_node.1.key'} is missing" in line
    assert f"run reign_init first: reign_init --dir {partial} --nodes 2" in line


def test_a_key_file_readable_by_others_names_the_file_and_the_fix(certs: Path, tmp_path: Path) -> None:
    # What a user who copied the files with a umask of 022 sees: one line, before any network.
    copied = tmp_path / "certs"
    shutil.copytree(certs, copied)  # keeps the modes: 0600 keys
    key = copied / "reign_node.1.key"
    key.chmod(0o644)
    line = fails("1", "--spec", str(copied / "cluster.json"))
    assert line == (
        f"reign_sample: cannot use node 1's certificates: node_key_path ({key}): private key is "
        f"readable by group/others (mode 0644); chmod 600 {key}"
    )


def test_a_node_id_not_in_the_spec(certs: Path) -> None:
    spec = spec_for(certs, [1, 2])
    line = fails("7", "--spec", str(spec))
    assert f"node 7 is not in {spec} (its nodes are 1, 2)" in line


def test_a_port_already_in_use(certs: Path) -> None:
    spec = spec_for(certs, [1, 2])
    port = int(json.loads(spec.read_text())["nodes"][0]["address"].rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        line = fails("1", "--spec", str(spec))
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "already in use" in line.lower()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "invalid JSON"),
        ('{"nodes": []}', "nodes"),
        ('{"nodes": [{"id": 1, "address": "127.0.0.1:1"}], "surprise": 1}', "surprise"),
    ],
)
def test_a_bad_spec_file(tmp_path: Path, content: str, expected: str) -> None:
    spec = tmp_path / "cluster.json"
    spec.write_text(content)
    line = fails("1", "--spec", str(spec))
    assert line.startswith(f"reign_sample: bad cluster spec: {spec}")
    assert expected in line


@pytest.mark.parametrize("argument", ["abc", "1.5", "-1", "256", ""])
def test_a_node_id_that_is_not_an_integer_in_range(argument: str) -> None:
    line = fails(argument, status=2)
    assert "N must be a node id, an integer from 0 to 255" in line


def test_no_node_id_at_all() -> None:
    assert "required: N" in fails(status=2)
