"""A reign node in a child process for the link tests: commands in, events out, one JSON object
per line (stdin / stdout).

Usage: python tests/link_node.py SPEC NODE_ID

Prints ``{"ev": "ready", "node", "inc"}`` once started. Values in events are JSON forms of
reign values (:func:`as_json`): a str stays a str, a tuple or list is a list, ``Exit`` is
``{"Exit": [sender or null, reason]}``, ``Crash`` is ``{"Crash": [type, message]}``, an address
or id is its text form.

Commands (``tag`` names a process or watch in the events about it):

* ``{"cmd": "spawn", "tag", "trap": bool, "link": addr or null}``: a process that reports every
  message it gets as ``{"ev": "got", "tag", "msg"}``; it traps exits if ``trap`` (and then links
  itself, after setting the flag), else it is spawned with ``link=``. It is watched: its exit
  prints ``{"ev": "down", "tag", "reason"}``. Replies ``{"ev": "spawned", "tag", "addr"}``;
  the process prints ``{"ev": "started", "tag"}`` when it runs.
* ``{"cmd": "watch", "tag", "addr"}``: watch ``addr``; its close prints ``{"ev": "down", "tag",
  "reason"}``.
* ``{"cmd": "exit", "addr", "reason"}``: ``reign.exit(addr, reason)`` (outside any process).
* ``{"cmd": "links", "addr", "id"}``: ``{"ev": "links", "id", "links": [text ids]}`` of a mailbox
  of this node.
* ``{"cmd": "wait_connected", "id"}``: ``{"ev": "connected", "id"}`` once every peer is up.

End of input stops the node gracefully (every process exits with ``"shutdown"``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any

import structlog

import reign


def as_json(value: Any) -> Any:
    if isinstance(value, reign.Exit):
        return {"Exit": [None if value.id is None else str(value.id), as_json(value.reason)]}
    if isinstance(value, reign.Crash):
        return {"Crash": [value.type, value.message]}
    if isinstance(value, reign.MailboxClosed):
        return {"MailboxClosed": [str(value.id), as_json(value.reason)]}
    if isinstance(value, (reign.Address, reign.MailboxID)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [as_json(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def emit(ev: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": ev, **fields}) + "\n")
    sys.stdout.flush()


async def _process(mbox: reign.Mailbox, tag: str, trap: bool, link: reign.Address | None) -> None:
    if trap:
        mbox.trap_exits = True
        if link is not None:
            mbox.link(link)
    emit("started", tag=tag)
    async for msg in mbox:
        emit("got", tag=tag, msg=as_json(msg))


async def main(spec: str, node_id: int) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, None)

    async with reign.create_from_spec_file(spec, node_id) as node:
        watcher, wbox = node.new_mailbox()
        tags: dict[reign.MailboxID, str] = {}

        async def watch() -> None:
            async for msg in wbox:
                emit("down", tag=tags.get(msg.id, str(msg.id)), reason=as_json(msg.reason))

        watch_task = asyncio.create_task(watch())
        threading.Thread(target=read_stdin, daemon=True).start()
        emit("ready", node=node.id, inc=node.incarnation)
        tasks = []
        while (cmd := await commands.get()) is not None:
            kind = cmd["cmd"]
            target = node.address(cmd["addr"]) if cmd.get("addr") else None
            if kind == "spawn":
                link = node.address(cmd["link"]) if cmd.get("link") else None
                if cmd["trap"]:
                    addr = node.spawn(_process, cmd["tag"], True, link)
                else:
                    addr = node.spawn(_process, cmd["tag"], False, None, link=link)
                tags[addr.id] = cmd["tag"]
                addr.on_close_notify(watcher)
                emit("spawned", tag=cmd["tag"], addr=str(addr))
            elif kind == "watch":
                assert target is not None
                tags[target.id] = cmd["tag"]
                target.on_close_notify(watcher)
            elif kind == "exit":
                assert target is not None
                reason = cmd["reason"]
                reign.exit(target, tuple(reason) if isinstance(reason, list) else reason)
            elif kind == "links":
                assert target is not None
                mbox = node.local_mailbox(target.id)
                emit("links", id=cmd["id"], links=sorted(str(i) for i in (mbox.links if mbox is not None else ())))
            elif kind == "wait_connected":

                async def connected(request: Any) -> None:
                    await node.wait_connected(timeout=30)
                    emit("connected", id=request)

                tasks.append(asyncio.create_task(connected(cmd["id"])))
            else:
                emit("error", reason=f"unknown command {kind!r}")
        watch_task.cancel()


if __name__ == "__main__":
    # Logs go to stderr: stdout carries only the JSON events.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    reign.run(main(sys.argv[1], int(sys.argv[2])))
