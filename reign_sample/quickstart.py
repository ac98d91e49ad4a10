"""``python -m reign_sample.quickstart [--certs-dir certs]``: the two-node chat ``make demo`` runs.

1. Creates the certificates and ``cluster.json`` in ``--certs-dir`` with ``reign_init``
   (``--nodes 2``) when any file the two nodes need is missing; reuses them otherwise.
2. Starts node 2 in the background: a child process in its own session (so the terminal's
   Ctrl-C does not reach it), stdin a pipe held by this process, its output shown here line by
   line prefixed ``[node 2] ``. Waits until it listens (or reports why it could not start).
3. Runs node 1 in the foreground with this process's stdin, stdout and stderr: the user types
   into it. Piped input works the same: ``echo hi | python -m reign_sample.quickstart``.
4. When node 1 exits (end of input, Ctrl-D, Ctrl-C), closes node 2's stdin so it leaves cleanly
   (``Bye!``); a node 2 that does not exit within ``NODE2_STOP_TIMEOUT`` is terminated.

Exit status: node 1's (0 also when the user left with Ctrl-C), 1 when node 2 could not start or
the certificates could not be created. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NoReturn

PROG = "reign_sample.quickstart"
DEFAULT_CERTS_DIR = "certs"
SPEC_FILE = "cluster.json"
NODE_IDS = (1, 2)
#: Seconds node 2 may take to listen: interpreter start, imports and loading the credentials
#: take well under a second; a loaded CI machine gets ample slack.
NODE2_READY_TIMEOUT = 30.0
#: Seconds node 2 may take to leave once its input is closed: its own bounded leave steps
#: (``reign_sample.__main__.LEAVE_STEP_TIMEOUT``, twice) plus slack.
NODE2_STOP_TIMEOUT = 10.0
#: Node 1's exit status after Ctrl-C (128 + SIGINT): the documented way to end the demo.
INTERRUPTED = 128 + signal.SIGINT


def _say(text: str) -> None:
    """One line on stdout in one write, so it never interleaves with node 1's lines."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {' '.join(message.split())}\n")


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=f"python -m {PROG}",
        allow_abbrev=False,
        description=(
            "Two-node reign chat on this machine: creates certificates if needed, runs node 2 "
            "in the background and node 1 in the foreground. Type lines; Ctrl-D ends."
        ),
    )
    parser.add_argument(
        "--certs-dir",
        default=DEFAULT_CERTS_DIR,
        metavar="DIR",
        help=f"folder of the certificates and cluster.json (default: {DEFAULT_CERTS_DIR})",
    )
    return parser


def _required_files(certs_dir: Path) -> list[Path]:
    files = [certs_dir / SPEC_FILE, certs_dir / "reign_ca.crt"]
    for n in NODE_IDS:
        files += [certs_dir / f"reign_node.{n}.crt", certs_dir / f"reign_node.{n}.key"]
    return files


def _ensure_certificates(certs_dir: Path) -> int:
    """Run reign_init into ``certs_dir`` unless every needed file is there; its exit status."""
    if all(path.exists() for path in _required_files(certs_dir)):
        _say(f"Using the certificates in {certs_dir}/")
        return 0
    _say(f"Creating certificates in {certs_dir}/ (reign_init --dir {certs_dir} --nodes 2)")
    from reign_init.__main__ import main as reign_init_main

    return reign_init_main(["--dir", str(certs_dir), "--nodes", str(len(NODE_IDS))])


def _child_env() -> dict[str, str]:
    """This environment, with the folder holding the running packages first on the path, so
    the nodes run the same code as this script (a source tree or an installed copy)."""
    env = dict(os.environ)
    source_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    return env


def _node_command(node_id: int, spec: Path) -> list[str]:
    return [sys.executable, "-m", "reign_sample", str(node_id), "--spec", str(spec)]


class _Background:
    """Node 2: a child process whose output is echoed with a prefix by a pump thread."""

    def __init__(self, node_id: int, spec: Path) -> None:
        from reign_sample.__main__ import READY_PREFIX

        self.prefix = f"[node {node_id}] "
        self.ready_marker = f"Node {node_id} {READY_PREFIX} "
        self.ready = threading.Event()
        self.listening = False
        self.proc = subprocess.Popen(
            _node_command(node_id, spec),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            start_new_session=True,  # the terminal's Ctrl-C is for node 1 and for us
        )
        self.pump = threading.Thread(target=self._echo, args=(self.proc.stdout,), daemon=True)
        self.pump.start()

    def _echo(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            _say(f"{self.prefix}{line}")
            if line.startswith(self.ready_marker):
                self.listening = True
                self.ready.set()
        self.ready.set()  # its output ended (it exited): stop waiting

    def wait_ready(self, timeout: float) -> bool:
        """True once the node listens; False if it exited or did not listen in time."""
        self.ready.wait(timeout)
        return self.listening and self.proc.poll() is None

    def stop(self) -> int | None:
        """Close its input (it leaves cleanly); terminate, then kill, if it lingers."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for action in (None, self.proc.terminate, self.proc.kill):
            if action is not None:
                with contextlib.suppress(OSError):
                    action()
            try:
                self.proc.wait(NODE2_STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                continue
        self.pump.join(NODE2_STOP_TIMEOUT)
        return self.proc.returncode


def _run_foreground(node_id: int, spec: Path) -> int:
    """Node 1 attached to this terminal; Ctrl-C goes to it (same process group) and we wait."""
    proc = subprocess.Popen(_node_command(node_id, spec), env=_child_env())
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue  # node 1 got the same SIGINT and is leaving; wait for it
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the two-node demo; return the exit status (see the module docstring)."""
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    certs_dir = Path(args.certs_dir)
    spec = certs_dir / SPEC_FILE
    node2: _Background | None = None
    try:
        status = _ensure_certificates(certs_dir)
        if status != 0:
            return status
        _say("Starting node 2 in the background (its lines start with [node 2])...")
        node2 = _Background(NODE_IDS[1], spec)
        if not node2.wait_ready(NODE2_READY_TIMEOUT):
            print(f"{PROG}: node 2 did not start; see its message above", file=sys.stderr,
                  flush=True)
            return 1
        _say("Starting node 1 here: type a line and press Enter to send it to node 2; "
             "Ctrl-D ends the demo.")
        status = _run_foreground(NODE_IDS[0], spec)
        return 0 if status == INTERRUPTED else status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # last resort: one line, never a traceback
        print(f"{PROG}: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)
        return 1
    finally:
        if node2 is not None:
            # Stopping is bounded; a Ctrl-C now would only leave node 2 behind with a traceback.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            node2.stop()


if __name__ == "__main__":
    sys.exit(main())
