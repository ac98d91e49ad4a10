"""A reign node in a child process, for multi-process tests.

Usage: python tests/node_proc.py SPEC NODE_ID

Creates an echo mailbox and prints ``ready <address>`` and ``incarnation <n>``. Every message
``(reply_to, payload)`` it receives is answered with ``("echo", node_id, payload)``. Exits when
stdin closes (or when killed, which is the point of most tests using it).
"""

from __future__ import annotations

import asyncio
import sys

import reign


async def main(spec: str, node_id: int) -> None:
    node = reign.create_from_spec_file(spec, node_id)
    async with node:
        addr, mbox = node.new_mailbox()
        print(f"incarnation {node.incarnation}", flush=True)
        print(f"ready {addr}", flush=True)

        async def echo() -> None:
            async for msg in mbox:
                if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], reign.Address):
                    msg[0].send(("echo", node_id, msg[1]))

        task = asyncio.create_task(echo())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        task.cancel()


if __name__ == "__main__":
    reign.run(main(sys.argv[1], int(sys.argv[2])))
