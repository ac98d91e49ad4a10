"""A reign node in a child process for the fault tests: commands in, events out, one JSON
object per line (stdin / stdout).

Usage: python tests/fault_node.py SPEC NODE_ID

On start the node claims the global name ``inbox.<id>`` for its *inbox* mailbox and prints
``{"ev": "ready", "node", "inc", "inbox", "watcher", "pid"}``. Every event carries ``"t"``
(``time.monotonic()``, the same clock in every process on Linux), ``"node"`` and ``"inc"``.

The inbox checks sequence-numbered streams
------------------------------------------
A stream message is ``("seq", sender, sender_inc, target_inc, seq, extra)``. Per
``(sender, sender_inc)`` the inbox requires ``seq`` to grow by one:

* a jump prints ``{"ev": "gap", "sender", "sinc", "first", "last"}`` (the missing seqs);
* a seq at or below the last one prints ``{"ev": "violation", "kind": "duplicate_or_reorder"}``;
* a ``target_inc`` other than this node's incarnation prints ``{"ev": "violation",
  "kind": "misdelivered"}``: something addressed to another incarnation reached this one.

Other inbox messages: ``("ping", reply_to, token)`` is answered with ``("pong", node, token)``;
a pong prints ``{"ev": "pong", "from", "token"}``; ``MultipleClaim(name)`` prints
``{"ev": "multiple_claim", "name"}``; anything else prints ``{"ev": "message", "repr"}``.
The *watcher* mailbox prints ``{"ev": "closed", "id": "<n.i.s>"}`` for each ``MailboxClosed``.
Connection status callbacks print ``{"ev": "status", "peer", "up"}``.

Streams (the sender side)
-------------------------
``{"cmd": "stream", "peers": [ids], "rate": per_second, "mix": bool}`` starts one stream per
peer, sent to whatever ``inbox.<peer>`` resolves to; a new resolution (the peer restarted) ends
the stream (``{"ev": "stream_end", ...}``) and starts a new one at seq 0. While the name is
unknown (the peer is down, so its claims are gone) the stream keeps sending to the last
address: those messages wait in the pending buffer. When the peer goes down the stream prints
``{"ev": "down_mark", "peer", "target", "seq"}``: ``seq`` is the first seq sent after the down,
so a message may be lost (a gap at the receiver) only if the gap ends at a down mark.
``mix`` adds variety (bytes up to 256 KiB, dicts with addresses, a registered class) and name
churn (a fresh mailbox claiming the shared name ``churn`` every half second).

Other commands (``id`` is echoed back where given)
--------------------------------------------------
``{"cmd": "mailboxes", "count", "names"}`` -> ``{"ev": "mailboxes", "addrs"}`` (extra mailboxes,
each claiming the matching name); ``{"cmd": "register", "name"}`` (the inbox claims it) ->
``{"ev": "registered"}``; ``{"cmd": "watch", "addr"}`` -> ``{"ev": "watching"}``;
``{"cmd": "lookup", "names", "id"}`` -> ``{"ev": "lookup", "result": {name: [addr, ...]}}``;
``{"cmd": "sync", "id"}`` -> ``{"ev": "synced", "ok"}``; ``{"cmd": "send", "to", "msg"}``
-> ``{"ev": "sent", "ok"}``; ``{"cmd": "ping", "to", "token"}``; ``{"cmd": "stop_streams"}``
-> ``{"ev": "streams", "streams": [{"peer", "target", "sent", "downs", "refused"}]}``;
``{"cmd": "report", "id"}`` -> ``{"ev": "report", "received": {"sender.sinc": {"last",
"count"}}, "peers": {id: state}, "multiple_claim_count"}``; ``{"cmd": "exit"}`` (or end of
input) stops the node gracefully.

OTP commands (``tests/test_otp_processes.py``): ``{"cmd": "gen_server", "name", "id"}`` starts
an :class:`Echo` gen_server claiming the global ``name`` -> ``{"ev": "gen_server", "addr"}``;
``{"cmd": "supervisor", "name", "id"}`` starts a one_for_one supervisor of one :class:`Echo`
claiming ``name`` (it claims it again after each restart) -> ``{"ev": "supervisor", "sup",
"child"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog

import reign


@reign.register_type(name="test.fault.Payload")
@dataclass(frozen=True)
class Payload:
    seq: int
    text: str


class Echo(reign.GenServer):
    """``("echo", x)`` -> ``x``; ``"hold"``: no reply, ever; ``"crash"``: raises;
    ``"block_terminate"``: its ``terminate`` never returns (a stop waits)."""

    async def init(self) -> None:
        self.held: list[reign.Caller] = []
        self.block = False

    async def handle_call(self, request: Any, caller: reign.Caller) -> Any:
        if request == "hold":
            self.held.append(caller)
            return reign.NOREPLY
        if request == "crash":
            raise RuntimeError("asked to crash")
        if request == "block_terminate":
            self.block = True
            return "blocking"
        if isinstance(request, tuple) and len(request) == 2 and request[0] == "echo":
            return request[1]
        raise reign.Failure("unknown", repr(request))

    async def terminate(self, reason: Any) -> None:
        if self.block:
            await asyncio.Event().wait()


#: Stream messages are sent in batches every STREAM_TICK seconds.
STREAM_TICK = 0.01


class _Stream:
    __slots__ = ("peer", "target", "seq", "downs", "refused")

    def __init__(self, peer: int, target: reign.Address) -> None:
        self.peer = peer
        self.target = target
        self.seq = 0
        self.downs: list[int] = []
        self.refused = 0

    def summary(self) -> dict[str, Any]:
        return {"peer": self.peer, "target": str(self.target), "sent": self.seq,
                "downs": self.downs, "refused": self.refused}


class App:
    def __init__(self, node: reign.Node) -> None:
        self.node = node
        self.id = node.id
        self.inc = node.incarnation
        self.inbox, self.inbox_box = node.new_mailbox()
        self.watcher, self.watcher_box = node.new_mailbox()
        self.last: dict[tuple[int, int], int] = {}
        self.count: dict[tuple[int, int], int] = {}
        self.streams: dict[int, _Stream] = {}
        self.stream_tasks: list[asyncio.Task[None]] = []
        self.extra_boxes: list[reign.Mailbox] = []
        self.tasks: list[asyncio.Task[None]] = []
        node.add_connection_status_callback(self.on_status)

    def emit(self, ev: str, **fields: Any) -> None:
        fields.update(ev=ev, t=time.monotonic(), node=self.id, inc=self.inc)
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    # ------------------------------------------------------------ events

    def on_status(self, peer: int, up: bool) -> None:
        self.emit("status", peer=peer, up=up)
        stream = self.streams.get(peer)
        if stream is not None and not up:
            stream.downs.append(stream.seq)
            self.emit("down_mark", peer=peer, target=str(stream.target), seq=stream.seq)

    async def run_inbox(self) -> None:
        last, count, inc, emit = self.last, self.count, self.inc, self.emit
        async for msg in self.inbox_box:
            if type(msg) is tuple and msg and msg[0] == "seq":
                _, sender, sinc, target_inc, seq, _extra = msg
                if target_inc != inc:
                    emit("violation", kind="misdelivered", sender=sender, sinc=sinc, seq=seq,
                         target_inc=target_inc)
                key = (sender, sinc)
                prev = last.get(key, -1)
                if seq == prev + 1:
                    last[key] = seq
                elif seq > prev + 1:
                    emit("gap", sender=sender, sinc=sinc, first=prev + 1, last=seq - 1)
                    last[key] = seq
                else:
                    emit("violation", kind="duplicate_or_reorder", sender=sender, sinc=sinc,
                         seq=seq, prev=prev)
                count[key] = count.get(key, 0) + 1
            elif type(msg) is tuple and len(msg) == 3 and msg[0] == "ping":
                msg[1].send(("pong", self.id, msg[2]))
            elif type(msg) is tuple and len(msg) == 3 and msg[0] == "pong":
                emit("pong", sender=msg[1], token=msg[2])
            elif isinstance(msg, reign.MultipleClaim):
                emit("multiple_claim", name=msg.name)
            else:
                emit("message", repr=repr(msg)[:200])

    async def run_watcher(self) -> None:
        async for msg in self.watcher_box:
            emit_id = str(msg.id) if isinstance(msg, reign.MailboxClosed) else repr(msg)
            self.emit("closed", id=emit_id)

    # ------------------------------------------------------------ streams

    def extra(self, seq: int) -> Any:
        if seq % 1000 == 999:
            return b"L" * (256 * 1024)
        if seq % 100 == 50:
            return b"m" * 16384
        kind = seq % 10
        if kind == 3:
            return {"n": seq, "list": [1.5, None, True, "x" * 20], "reply": self.inbox}
        if kind == 5:
            return Payload(seq, "p" * (seq % 64))
        if kind == 7:
            return (seq, [seq] * 8, {"nested": {"deeper": [b"b" * 32]}})
        return None

    async def run_stream(self, peer: int, rate: float, mix: bool) -> None:
        names = self.node.names
        per_tick = rate * STREAM_TICK
        budget = 0.0
        me, my_inc = self.id, self.inc
        seen: set[reign.Address] = set()  # never go back to an earlier target
        while True:
            addr = names.lookup(f"inbox.{peer}")
            stream = self.streams.get(peer)
            if addr is not None and addr not in seen:
                seen.add(addr)
                if stream is not None:
                    self.emit("stream_end", **stream.summary())
                stream = self.streams[peer] = _Stream(peer, addr)
                self.emit("stream_start", peer=peer, target=str(addr))
            if stream is not None:
                budget += per_tick
                target = stream.target
                target_inc = target.id.incarnation
                while budget >= 1:
                    seq = stream.seq
                    extra = self.extra(seq) if mix else None
                    if target.send(("seq", me, my_inc, target_inc, seq, extra)):
                        stream.seq = seq + 1
                        budget -= 1
                    else:  # stale incarnation or a full pending buffer: known to the sender
                        stream.refused += 1
                        budget = 0
            await asyncio.sleep(STREAM_TICK)

    async def run_churn(self) -> None:
        previous: reign.Mailbox | None = None
        while True:
            addr, mbox = self.node.new_mailbox()
            self.node.names.register("churn", addr)
            if previous is not None:
                previous.close()
            previous = mbox
            await asyncio.sleep(0.5)

    async def sync(self, request: Any, timeout: float) -> None:
        try:
            await self.node.names.sync(timeout=timeout)
            ok = True
        except TimeoutError:
            ok = False
        self.emit("synced", id=request, ok=ok)

    def stop_streams(self) -> None:
        for task in self.stream_tasks:
            task.cancel()
        self.stream_tasks = []
        self.emit("streams", streams=[s.summary() for s in self.streams.values()])

    # ------------------------------------------------------------ commands

    async def handle(self, cmd: dict[str, Any]) -> None:
        kind = cmd["cmd"]
        node = self.node
        if kind == "stream":
            for peer in cmd["peers"]:
                self.stream_tasks.append(asyncio.create_task(
                    self.run_stream(peer, cmd.get("rate", 100), cmd.get("mix", False))))
            if cmd.get("mix"):
                self.stream_tasks.append(asyncio.create_task(self.run_churn()))
            self.emit("streaming", peers=cmd["peers"])
        elif kind == "stop_streams":
            self.stop_streams()
        elif kind == "mailboxes":
            addrs = []
            for i in range(cmd["count"]):
                addr, mbox = node.new_mailbox()
                self.extra_boxes.append(mbox)
                for name in cmd.get("names", [])[i : i + 1]:
                    node.names.register(name, addr)
                addrs.append(str(addr))
            self.emit("mailboxes", addrs=addrs)
        elif kind == "register":
            node.names.register(cmd["name"], self.inbox)
            self.emit("registered", name=cmd["name"])
        elif kind == "watch":
            node.address(cmd["addr"]).on_close_notify(self.watcher)
            self.emit("watching", addr=cmd["addr"])
        elif kind == "lookup":
            result = {n: [str(a) for a in node.names.lookup_all(n)] for n in cmd["names"]}
            first = {n: (str(a) if (a := node.names.lookup(n)) is not None else None) for n in cmd["names"]}
            self.emit("lookup", id=cmd.get("id"), result=result, first=first,
                      multiple_claim_count=node.names.multiple_claim_count)
        elif kind == "sync":  # in a task: a slow sync must not hold up later commands
            self.tasks.append(asyncio.create_task(self.sync(cmd.get("id"), cmd.get("timeout", 10))))
        elif kind == "send":
            ok = node.address(cmd["to"]).send(_from_json(cmd["msg"]))
            self.emit("sent", id=cmd.get("id"), ok=ok)
        elif kind == "ping":
            ok = node.address(cmd["to"]).send(("ping", self.inbox, cmd["token"]))
            self.emit("pinged", token=cmd["token"], ok=ok)
        elif kind == "gen_server":
            addr = await Echo.start(node, global_name=cmd["name"])
            self.emit("gen_server", id=cmd.get("id"), addr=str(addr))
        elif kind == "supervisor":
            spec = reign.ChildSpec("echo", Echo, kwargs={"global_name": cmd["name"]})
            sup = await reign.Supervisor.start(node, [spec], intensity=100)
            (_, child), = await reign.Supervisor.which_children(sup)
            self.emit("supervisor", id=cmd.get("id"), sup=str(sup), child=str(child))
        elif kind == "report":
            stats = node.statistics().peers
            self.emit(
                "report", id=cmd.get("id"),
                received={f"{s}.{i}": {"last": self.last[(s, i)], "count": self.count[(s, i)]}
                          for (s, i) in self.last},
                peers={str(p): {"state": st.state, "incarnation": st.incarnation,
                                "dropped": st.dropped_messages, "connects": st.connects}
                       for p, st in stats.items()},
                multiple_claim_count=node.names.multiple_claim_count,
            )
        else:
            self.emit("error", reason=f"unknown command {kind!r}")


def _from_json(value: Any) -> Any:
    """JSON lists stand for tuples in commands (messages are compared as tuples)."""
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


async def main(spec: str, node_id: int) -> None:
    node = reign.create_from_spec_file(spec, node_id)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, None)

    async with node:
        app = App(node)
        node.names.register(f"inbox.{node_id}", app.inbox)
        tasks = [asyncio.create_task(app.run_inbox()), asyncio.create_task(app.run_watcher())]
        threading.Thread(target=read_stdin, daemon=True).start()
        app.emit("ready", inbox=str(app.inbox), watcher=str(app.watcher), pid=os.getpid())
        while True:
            cmd = await commands.get()
            if cmd is None or cmd["cmd"] == "exit":
                break
            try:
                await app.handle(cmd)
            except Exception as exc:  # report, keep serving: the test decides
                app.emit("error", reason=repr(exc)[:300], cmd=cmd["cmd"])
        app.stop_streams()
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    # Logs go to stderr (a file the test keeps): stdout carries only the JSON events.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    reign.run(main(sys.argv[1], int(sys.argv[2])))
