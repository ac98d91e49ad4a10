"""reign_sample: a chat between reign nodes, the demo a new user runs first.

``reign_sample N [--spec certs/cluster.json]`` (or ``python -m reign_sample N``) joins the chat
as node N of the cluster spec: it registers its mailbox under the global name ``chatter_N``,
sends every line read from stdin to the other chatters and prints what they send. The command
is :mod:`reign_sample.__main__`; ``python -m reign_sample.quickstart`` (``make demo``) creates
the certificates if needed and runs a two-node chat on this machine.

This module holds only the message the chatters exchange, so that it is registered once per
process however the command is started (console script or ``python -m``).
"""

from __future__ import annotations

from dataclasses import dataclass

import reign

__all__ = ["Chat", "chatter_name"]


@dataclass(frozen=True, slots=True)
class Chat:
    """One line of chat: ``text`` as typed on node ``sender``."""

    sender: int
    text: str


# An explicit wire name: the module path differs between ``python -m`` and the console script.
reign.register_type(Chat, name="reign_sample.Chat")


def chatter_name(node_id: int) -> str:
    """The global name node ``node_id``'s chatter registers (``chatter_<id>``)."""
    return f"chatter_{node_id}"
