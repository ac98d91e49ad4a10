"""``reign_sample N [--spec certs/cluster.json] [--linger SECONDS]``: chat between reign nodes.

Behaviour (``tests/test_sample.py`` drives it as a real process):

* Joins the cluster as node N of the spec and registers its mailbox under the global name
  ``chatter_N``. Prints ``Node N listening on HOST:PORT ...`` once it listens, then
  ``Node M joined`` / ``Node M left`` as peers connect and disconnect.
* Every non-blank line read from stdin goes to ``chatter_M`` for each other node M of the spec.
  While ``chatter_M`` is unknown here (node M is not up, or its name has not reached us yet) the
  lines for M are queued, in order, and sent as soon as the name appears; the user is told when
  a queue starts and when it is delivered. Nothing typed is dropped silently.
* Every chat message received is printed as ``Received: <text> (from node M)``.
* End of input: lines still queued get up to ``--linger`` seconds (default 5) to go out, then
  the node waits (bounded) until what it sent has been written and ``names.sync()`` has been
  answered by the connected peers -- their answer comes after our earlier frames on the same
  ordered connection, so those messages are in the peers' mailboxes. Lines still queued are
  reported as ``Not delivered to node M: <text>``; the node stops; ``Bye!``; exit status 0.
  Ctrl-C (SIGINT) and SIGTERM leave the same way without the linger, with status 128 + signal;
  a second signal exits at once.
* reign's log events go to stderr: errors only, everything from info up with ``--verbose``.
* Errors a new user can cause (no certificates, a node id not in the spec, the port in use, a
  bad spec, a bad command line) are one line on stderr starting ``reign_sample: `` -- never a
  traceback. Exit status: 1 for those failures, 2 for a bad command line.

Input is read by a daemon thread with ``os.read`` on file descriptor 0, so terminals, pipes and
regular files all work, and a read blocked at exit holds no lock the interpreter needs.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import errno
import logging
import os
import re
import shlex
import signal
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

import reign
from reign._cli import OneLineParser, one_line, os_reason
from reign_sample import Chat, chatter_name

PROG = "reign_sample"
DEFAULT_SPEC = os.path.join("certs", "cluster.json")
#: Printed (followed by the address) once the node listens; ``quickstart`` waits for it.
READY_PREFIX = "listening on"
#: Seconds queued lines may wait at end of input for their recipients (``--linger``): long
#: enough for a peer started a moment ago to connect and replicate its name (tens of ms on a
#: LAN), short enough that ``echo hi | reign_sample 1`` with a node down does not seem to hang.
DEFAULT_LINGER = 5.0
#: How often queued lines look for their recipient's name again. The registry has no "name
#: appeared" event; 50 ms is imperceptible in a chat and costs nothing while the queues are empty.
RETRY_INTERVAL = 0.05
#: Bound on each step of leaving (outbound buffers written, ``names.sync()`` answered): a peer
#: that stopped answering must not keep us from exiting.
LEAVE_STEP_TIMEOUT = 3.0
#: Bytes per ``os.read`` of stdin.
READ_CHUNK = 64 * 1024
_NODE_ID_RE = re.compile(r"[0-9]{1,3}")


class _Failure(Exception):
    """A failure reported as one line on stderr and exit status 1."""




# --------------------------------------------------------------------------- command line



def _node_id(text: str) -> int:
    if _NODE_ID_RE.fullmatch(text) is None or int(text) > 255:
        raise argparse.ArgumentTypeError(
            f"N must be a node id, an integer from 0 to 255, got {text!r}"
        )
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 3600, got {text!r}")
    return value


def _build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "Chat between the nodes of a reign cluster: join as node N, send every line typed "
            "to the other nodes' chatters, print what they send. End of input (Ctrl-D) leaves."
        ),
        epilog=(
            "Create the certificates and spec first with: reign_init --dir certs --nodes 2; "
            "then run 'reign_sample 1' and 'reign_sample 2' in two terminals."
        ),
    )
    parser.add_argument("node", metavar="N", type=_node_id, help="this node's id in the spec")
    parser.add_argument(
        "--spec",
        default=DEFAULT_SPEC,
        metavar="PATH",
        help=f"cluster spec written by reign_init (default: {DEFAULT_SPEC})",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show reign's log events (connections, handshakes, ...) on stderr",
    )
    parser.add_argument(
        "--linger",
        type=_seconds,
        default=DEFAULT_LINGER,
        metavar="SECONDS",
        help=(
            "at end of input, how long lines queued for nodes that are not up yet may wait "
            f"to be delivered (default: {DEFAULT_LINGER:g})"
        ),
    )
    return parser


# --------------------------------------------------------------------------- setup checks


def _reign_init_command(spec_path: Path, node_id: int) -> str:
    folder = str(spec_path.parent) if str(spec_path.parent) else "."
    return f"reign_init --dir {shlex.quote(folder)} --nodes {max(2, node_id)}"


def _load_spec(spec_path: Path, node_id: int) -> reign.ClusterSpec:
    """The validated spec, with node ``node_id``'s credential files present.

    Raises :class:`_Failure` with the message a new user needs (what to run) otherwise.
    """
    if not spec_path.exists():
        raise _Failure(
            f"no cluster spec at {spec_path}; run reign_init first: "
            f"{_reign_init_command(spec_path, node_id)}"
        )
    try:
        spec = reign.ClusterSpec.load(spec_path)
    except reign.ClusterSpecError as exc:
        raise _Failure(f"bad cluster spec: {exc}") from None
    if node_id not in spec.node_ids:
        ids = ", ".join(str(i) for i in spec.node_ids)
        raise _Failure(f"node {node_id} is not in {spec_path} (its nodes are {ids})")
    for path_field, pem_field in (
        ("node_key_path", "node_key_pem"),
        ("node_cert_path", "node_cert_pem"),
        ("cluster_cert_path", "cluster_cert_pem"),
    ):
        if getattr(spec, pem_field) is not None:
            continue
        path = spec.credential_path(path_field, node_id)
        if path is not None and not path.exists():
            raise _Failure(
                f"certificate file {path} is missing; run reign_init first: "
                f"{_reign_init_command(spec_path, node_id)} "
                "(or copy the file from the machine where reign_init ran)"
            )
    return spec


def _listen_failure(exc: OSError, node_id: int, spec: reign.ClusterSpec) -> _Failure:
    host, port = spec.node(node_id).listen_address
    # The cluster layer words it as "node N cannot listen on HOST:PORT: <reason>".
    # asyncio appends "(while attempting to bind on address (...))": the line says it already.
    text = re.sub(r" \(while attempting to bind on address .*\)\)", "", os_reason(exc))
    if str(port) not in text:
        text = f"node {node_id} cannot listen on {host}:{port}: {text}"
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if cause.errno == errno.EADDRINUSE:
        text += f" (is node {node_id} already running, or another program using port {port}?)"
    elif cause.errno == errno.EADDRNOTAVAIL:
        text += f" (is {host} an address of this machine? check node {node_id} in the spec)"
    return _Failure(text)


# --------------------------------------------------------------------------- console


class _Console:
    """Prints chat lines to stdout, flushed at once; a closed stdout silences it (no error)."""

    def __init__(self) -> None:
        self.broken = False

    def say(self, text: str) -> None:
        if self.broken:
            return
        try:
            # One write per line: other processes may share this stdout (quickstart's node 1
            # and the echo of node 2), and print() writes the text and its end separately.
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.broken = True
            # Keep the interpreter's final flush from reporting the broken pipe again.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)


def _start_stdin_reader(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Feed stdin's lines (without line ends) into ``lines``; ``None`` marks end of input."""
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else -1
        encoding = (sys.stdin.encoding if sys.stdin is not None else None) or "utf-8"
    except (OSError, ValueError):
        fd, encoding = -1, "utf-8"

    def put(item: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(lines.put_nowait, item)
        except RuntimeError:  # the loop is closed: we are exiting
            return False
        return True

    def read() -> None:
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        pending = ""
        while fd >= 0:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except OSError:
                chunk = b""
            final = not chunk
            pending += decoder.decode(chunk, final=final)
            *complete, pending = pending.split("\n")
            for line in complete:
                if not put(line.rstrip("\r")):
                    return
            if final:
                break
        if pending:
            put(pending.rstrip("\r"))
        put(None)

    threading.Thread(target=read, name=f"{PROG}-stdin", daemon=True).start()


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- the chat


class _Chatter:
    """One node's side of the chat: outbound queues per peer, the inbox, join/leave notices."""

    def __init__(self, node: reign.Node, peers: Sequence[int], console: _Console) -> None:
        self.node = node
        self.peers = list(peers)
        self.say = console.say
        self.queues: dict[int, deque[str]] = {peer: deque() for peer in self.peers}
        self.address, self.mailbox = node.new_mailbox()
        self.retry_wakeup = asyncio.Event()

    # ------------------------------------------------------------ outbound

    def _send(self, peer: int, text: str) -> bool:
        """Send ``text`` to node ``peer``'s chatter now; False if its name is not known here."""
        target = self.node.names.lookup(chatter_name(peer))
        if target is None:
            return False
        try:
            return target.send(Chat(self.node.id, text))
        except reign.EncodeError as exc:  # a line over the spec's max_message_bytes
            self.say(f"Not delivered to node {peer}: {exc}")
            return True  # dealt with: retrying cannot help

    def send_line(self, text: str) -> None:
        for peer in self.peers:
            queue = self.queues[peer]
            if queue or not self._send(peer, text):
                if not queue:
                    self.say(f"Node {peer} is not in the chat yet; queued until it joins.")
                    self.retry_wakeup.set()
                queue.append(text)

    def queued(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def retry_queued(self) -> None:
        for peer, queue in self.queues.items():
            sent = 0
            while queue and self._send(peer, queue[0]):
                queue.popleft()
                sent += 1
            if sent:
                plural = "" if sent == 1 else "s"
                self.say(f"Delivered {sent} queued message{plural} to node {peer}.")

    async def retry_loop(self) -> None:
        while True:
            await self.retry_wakeup.wait()
            self.retry_queued()
            if self.queued():
                await asyncio.sleep(RETRY_INTERVAL)
            else:
                self.retry_wakeup.clear()

    # ------------------------------------------------------------ inbound

    def show(self, msg: Any) -> None:
        if isinstance(msg, Chat):
            self.say(f"Received: {msg.text} (from node {msg.sender})")
        elif isinstance(msg, reign.MultipleClaim):
            self.say(f"Warning: another mailbox also claims {msg.name}; is a node running twice?")

    async def receive_loop(self) -> None:
        with contextlib.suppress(reign.MailboxClosedError):
            async for msg in self.mailbox:
                self.show(msg)

    def show_remaining(self) -> None:
        while True:
            try:
                msg = self.mailbox.receive_nowait()
            except (reign.Empty, reign.MailboxClosedError):
                return
            self.show(msg)

    def connection_status(self, node_id: int, connected: bool) -> None:
        self.say(f"Node {node_id} {'joined' if connected else 'left'}")
        if connected and self.queued():
            self.retry_wakeup.set()

    # ------------------------------------------------------------ leaving

    async def leave(self, linger: float) -> None:
        """Give queued lines ``linger`` seconds, make sure what was sent arrived, report the rest."""
        loop = asyncio.get_running_loop()
        if linger > 0 and self.queued():
            self.say(f"Waiting up to {linger:g} s to deliver {self.queued()} queued message(s)...")
            deadline = loop.time() + linger
            while self.queued() and loop.time() < deadline:
                self.retry_queued()
                if self.queued():
                    await asyncio.sleep(RETRY_INTERVAL)
        await self._wait_written()
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError, reign.ReignError):
            await asyncio.wait_for(self.node.names.sync(), LEAVE_STEP_TIMEOUT)
        for peer, queue in self.queues.items():
            for text in queue:
                self.say(f"Not delivered to node {peer}: {text}")
            queue.clear()

    async def _wait_written(self) -> None:
        """Until nothing is buffered for an up peer (bounded by LEAVE_STEP_TIMEOUT)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEAVE_STEP_TIMEOUT

        def busy() -> bool:
            peers = self.node.statistics().peers
            return any(p.state == "up" and p.queued_bytes for p in peers.values())

        while busy() and loop.time() < deadline:
            await asyncio.sleep(0.01)


async def _run(args: argparse.Namespace, spec_path: Path, spec: reign.ClusterSpec) -> int:
    loop = asyncio.get_running_loop()
    console = _Console()
    stop = asyncio.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int) -> None:
        if stopped_by:  # a second Ctrl-C: the user does not want to wait
            print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stopped_by.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, on_signal, signum)

    try:
        node = reign.create_from_spec(spec, args.node)
    except reign.ClusterSpecError as exc:
        raise _Failure(f"cannot use node {args.node}'s certificates: {exc}") from None
    peers = [i for i in spec.node_ids if i != args.node]
    chatter = _Chatter(node, peers, console)
    node.add_connection_status_callback(chatter.connection_status)
    try:
        await node.start()
    except OSError as exc:
        raise _listen_failure(exc, args.node, spec) from None

    tasks: list[asyncio.Task[Any]] = []
    try:
        node.names.register(chatter_name(args.node), chatter.address)
        host, port = spec.node(args.node).listen_address
        others = ", ".join(map(str, peers)) or "none"
        console.say(
            f"Node {args.node} {READY_PREFIX} {host}:{port} as {chatter_name(args.node)} "
            f"(spec {spec_path}; other nodes: {others})"
        )
        if _interactive():
            console.say("Type a line and press Enter to send it to the other nodes; Ctrl-D to quit.")
        tasks = [
            asyncio.create_task(chatter.receive_loop()),
            asyncio.create_task(chatter.retry_loop()),
        ]
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        _start_stdin_reader(loop, lines)
        stop_wait = asyncio.create_task(stop.wait())
        tasks.append(stop_wait)
        while True:
            get = asyncio.create_task(lines.get())
            await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                break
            line = get.result()
            if line is None:
                break
            if line.strip():
                chatter.send_line(line)
        if stopped_by:
            console.say("")  # end the line the terminal echoed ^C on
        await chatter.leave(0.0 if stopped_by else args.linger)
        chatter.show_remaining()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.stop()
    console.say("Bye!")
    return 128 + stopped_by[0] if stopped_by else 0


def _configure_logging(verbose: bool) -> None:
    """reign logs with structlog and never configures it; this application does. By default
    only errors (on stderr) so the chat stays readable; ``--verbose`` shows info and up."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO if verbose else logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``reign_sample`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Never raises and never prints a traceback: failures print one line on stderr and return 1,
    a bad command line returns 2 (``--help`` returns 0), end of input returns 0.
    """
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on errors
        return exc.code if isinstance(exc.code, int) else 2
    _configure_logging(args.verbose)
    spec_path = Path(args.spec)
    try:
        spec = _load_spec(spec_path, args.node)
        return int(reign.run(_run(args, spec_path, spec)))
    except _Failure as exc:
        print(f"{PROG}: {one_line(str(exc))}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # before the signal handlers were installed
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # last resort: the contract is one line, never a traceback
        print(
            f"{PROG}: unexpected error: {type(exc).__name__}: {one_line(os_reason(exc))}",
            file=sys.stderr,
            flush=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
