"""reign's asyncio runtime: mailboxes, the node, its connections and the name registry.

Built on the sans-IO core (``reign._core``) through narrow seams: each module declares, as a
Protocol, what it needs from the others (``MailboxHost``, ``ClusterHost``, ``ConnectionOwner``,
``NamesHost``, ``ControlChannel``), and :class:`~.node.Node` assembles them in its constructor.
Every piece of a node's state lives on its loop thread (:mod:`.loop`).
"""
