"""The cluster spec: which nodes exist, where they listen, which credentials they use.

The JSON format is the public contract in API.md ("Cluster spec"); this module is its only
parser. Invariants of every :class:`ClusterSpec` object, however it was built:

* ``nodes`` is a non-empty tuple of :class:`NodeSpec` with unique ids in 0..255 and unique
  ``address`` values, kept in the order the spec lists them.
* Addresses are ``(host, port)`` with a non-empty host (IPv6 literals without brackets) and a
  port in 1..65535; a node's ``listen_address`` is never None (it defaults to ``address``).
* For each credential (node key, node certificate, cluster certificate) the inline PEM, the path,
  or both are present; inline PEM wins when both are. Paths may contain ``%d`` (replaced by the
  node id) and ``%%`` (a literal ``%``), no other ``%`` sequence.
* Tuning values are within these bounds (the constants below say where the numbers come from):

  =====================  ==========  ===================================================
  field                  default     accepted
  =====================  ==========  ===================================================
  ``net_ticktime``       60 s        a number of seconds, 1 to 86400 (ints become floats)
  ``max_message_bytes``  16 MiB      an integer, 1024 to 256 MiB
  ``pending_messages``   10000       an integer >= 0 (0: nothing is buffered)
  ``pending_bytes``      16 MiB      an integer >= 0
  ``outbound_bytes``     32 MiB      an integer >= ``max_message_bytes`` + 21 (one frame)
  ``handshakes``         256         an integer >= 1 (connections not yet authenticated)
  ``handshakes_per_ip``  64          an integer >= 1 (of those, from one source address)
  =====================  ==========  ===================================================

  The registry's bounds on what one peer may make this node hold (what each means, and what
  happens beyond it, is in :mod:`reign._core.registry_wire`):

  =============================  =========  ===========================================
  field                          default    accepted
  =============================  =========  ===========================================
  ``registry_frame_claims``      5000       an integer, 1 to 1,000,000 (records/frame)
  ``registry_peer_claims``       190000     an integer, 1 to 2**40 (claim units/peer)
  ``registry_snapshot_timeout``  30 s       a number of seconds, 0.1 to 86400
  ``registry_notice_interval``   1 s        a number of seconds, 0 to 3600 (0: no limit)
  =============================  =========  ===========================================

Strictness is a feature: unknown fields (top level or per node), wrong JSON types (a bool is not
an int), duplicate JSON keys, NaN/Infinity and out-of-range values are all
:class:`~reign.ClusterSpecError`, and every message starts with the offending field as a path
into the JSON (``nodes[1].id: duplicate id 2``); :meth:`ClusterSpec.load` prefixes the file name.

Paths are resolved at use (:meth:`ClusterSpec.load_credentials`), relative to ``base_dir`` (the
spec file's folder for :meth:`ClusterSpec.load`; the current directory when ``base_dir`` is None).
No ``~`` or environment-variable expansion is done. Loading is where credentials are judged:
a node key file that group or others may access, a certificate that does not fit, and a
cluster or node certificate outside its validity dates are refused there, so
``reign.create_from_spec`` fails before the node listens or dials.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.frames import MESSAGE_OVERHEAD as _MESSAGE_OVERHEAD
from .._core.ids import MAX_NODE_ID
from .._core.registry_wire import (
    DEFAULT_FRAME_CLAIMS,
    DEFAULT_NOTICE_INTERVAL,
    DEFAULT_PEER_CLAIMS,
    DEFAULT_SNAPSHOT_TIMEOUT,
)
from .._errors import ClusterSpecError, HandshakeError
from . import certs as _certs
from . import keyfiles as _keyfiles

__all__ = [
    "DEFAULT_HANDSHAKES",
    "DEFAULT_HANDSHAKES_PER_IP",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_NET_TICKTIME",
    "DEFAULT_OUTBOUND_BYTES",
    "DEFAULT_PENDING_BYTES",
    "DEFAULT_PENDING_MESSAGES",
    "MAX_MAX_MESSAGE_BYTES",
    "MAX_NET_TICKTIME",
    "MIN_MAX_MESSAGE_BYTES",
    "MIN_NET_TICKTIME",
    "ClusterSpec",
    "NodeSpec",
]

_MIB = 1024 * 1024

#: Seconds of silence after which a peer is declared lost; Erlang's kernel default (60 s).
DEFAULT_NET_TICKTIME = 60.0
#: Smallest net_ticktime accepted. Ticks go out every quarter of it, so below one second the
#: tick traffic and false alarms on a busy loop outweigh faster detection.
MIN_NET_TICKTIME = 1.0
#: Largest net_ticktime accepted: one day. Keeps timer arithmetic sane; nobody waits longer.
MAX_NET_TICKTIME = 86_400.0
#: Largest encoded message by default: 16 MiB, ample for messages, small enough that one frame
#: cannot exhaust a node's memory.
DEFAULT_MAX_MESSAGE_BYTES = 16 * _MIB
#: Smallest max_message_bytes accepted: the handshake and control messages must always fit.
MIN_MAX_MESSAGE_BYTES = 1024
#: Largest max_message_bytes accepted: 256 MiB, far above any sane message and well below the
#: 32-bit frame length limit.
MAX_MAX_MESSAGE_BYTES = 256 * _MIB
#: Messages buffered per disconnected peer by default (0 means drop everything while down).
DEFAULT_PENDING_MESSAGES = 10_000
#: Encoded bytes buffered per disconnected peer by default.
DEFAULT_PENDING_BYTES = 16 * _MIB
#: Registry tuning: the defaults and where they come from are in reign._core.registry_wire.
#: Upper bounds keep a typo from disabling a bound: a million records is ~10x a frame's
#: budget, 2**40 claim units is more memory than any machine has, a day and an hour are
#: longer than anyone waits for a snapshot or a notice.
MAX_REGISTRY_FRAME_CLAIMS = 1_000_000
MAX_REGISTRY_PEER_CLAIMS = 1 << 40
MIN_REGISTRY_SNAPSHOT_TIMEOUT = 0.1
MAX_REGISTRY_SNAPSHOT_TIMEOUT = 86_400.0
MAX_REGISTRY_NOTICE_INTERVAL = 3600.0
_REGISTRY_TUNING = (
    "registry_frame_claims",
    "registry_peer_claims",
    "registry_snapshot_timeout",
    "registry_notice_interval",
)
#: Bytes that may wait for a connected peer (unwritten frames plus the transport's buffer)
#: before ``send`` is refused: twice the pending buffer, so a peer that comes back finds its
#: whole pending buffer flushed with room to spare, and two maximum-size messages fit. The
#: node's own frames (DOWN, registry replies) get as much again as headroom (connection.py).
DEFAULT_OUTBOUND_BYTES = 32 * _MIB
#: Connections not yet authenticated (accept to HELLO) held at once. A real handshake takes
#: milliseconds, and a stalled one ~55 KiB (issue 13): 256 cost at most ~14 MiB and a quarter of
#: the common 1024-descriptor limit, and as many as a 256-node mesh's lower ids dialling at once.
DEFAULT_HANDSHAKES = 256
#: Of those, held at once from one source address: a quarter, so at least four sources share
#: the bound before a flood from one address crowds the others (all nodes of a one-host
#: cluster share 127.0.0.1; their dials are retried when cut off, see admission.py).
DEFAULT_HANDSHAKES_PER_IP = 64

_NODE_FIELDS = frozenset({"id", "address", "listen_address", "local_address"})
_CREDENTIALS = (
    # (path field, inline field, what the PEM must hold)
    ("node_key_path", "node_key_pem", "private key"),
    ("node_cert_path", "node_cert_pem", "certificate"),
    ("cluster_cert_path", "cluster_cert_pem", "certificate"),
)
_TOP_FIELDS = frozenset(
    {"nodes", "net_ticktime", "max_message_bytes", "pending_messages", "pending_bytes"}
    | set(_REGISTRY_TUNING)
    | {"outbound_bytes", "handshakes", "handshakes_per_ip"}
    | {name for triple in _CREDENTIALS for name in triple[:2]}
)
_PERCENT_RE = re.compile(r"%(.?)", re.DOTALL)
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")
# RFC 1123 labels, plus "_" which container and service-discovery names use in practice.
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_MAX_HOSTNAME = 253


# --------------------------------------------------------------------------- value checks
# Each takes the field's path for the message and returns the validated (normalised) value.


def _fail(where: str, problem: str) -> ClusterSpecError:
    return ClusterSpecError(f"{where}: {problem}")


def _check_int(where: str, value: object, low: int, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise _fail(where, f"must be an integer {bound}, got {_show(value)}")
    return value


def _check_str(where: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"must be a non-empty string, got {_show(value)}")
    if "\x00" in value:
        raise _fail(where, "must not contain NUL characters")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_host(where: str, host: str, expected: str) -> str:
    """Validate a host: an IPv4/IPv6 literal or a DNS-style name. Returns it normalised."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise _fail(where, f"{inner!r} in brackets is not an IPv6 address") from None
        return inner
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (
        not name
        or len(name) > _MAX_HOSTNAME
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        or all(label.isdigit() for label in labels)  # looks like IPv4 but is not one
    ):
        raise _fail(where, f"expected {expected}, got {_show(host)}")
    return host


def _parse_address(where: str, value: object) -> tuple[str, int]:
    """Parse ``"host:port"`` (``"[v6]:port"`` for IPv6) into ``(host, port)``."""
    expected = "'host:port' (IPv6 as '[::1]:port')"
    if not isinstance(value, str):
        raise _fail(where, f"expected {expected}, got {_show(value)}")
    if value.startswith("["):
        close = value.find("]:")
        host, port_text = (value[: close + 1], value[close + 2 :]) if close > 0 else ("", "")
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or ":" in host:
            host = ""
    if not host:
        raise _fail(where, f"expected {expected}, got {_show(value)}")
    if _PORT_RE.fullmatch(port_text) is None or int(port_text) > 65535:
        raise _fail(where, f"port must be 1..65535 in plain decimal, got {_show(port_text)}")
    return _check_host(where, host, expected), int(port_text)


def _check_address_tuple(where: str, value: object) -> tuple[str, int]:
    """Validate an already-parsed ``(host, port)``; accepts any 2-sequence, returns a tuple."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not isinstance(value[0], str)
        or not value[0]
    ):
        raise _fail(where, f"must be a (host, port) pair, got {_show(value)}")
    host, port = value
    _check_int(f"{where} port", port, 1, 65535)
    return _check_host(where, host, "a host name or IP address"), port


def _format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_path_template(where: str, value: object) -> str:
    text = _check_str(where, value)
    for match in _PERCENT_RE.finditer(text):
        if match.group(1) not in ("d", "%"):
            raise _fail(where, f"only %d (the node id) and %% may follow '%', in {_show(text)}")
    return text


def _expand(template: str, node_id: int) -> str:
    return _PERCENT_RE.sub(lambda m: str(node_id) if m.group(1) == "d" else "%", template)


def _check_number(where: str, value: object, low: float, high: float) -> float:
    if (
        type(value) not in (int, float)
        or not low <= value <= high  # type: ignore[operator]  # before isfinite: 10**400 overflows it
        or not math.isfinite(value)  # type: ignore[arg-type]
    ):
        raise _fail(where, f"must be a number >= {low:g} and <= {high:g}, got {_show(value)}")
    return float(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the cluster.

    ``address`` is where peers dial it; ``listen_address`` where it listens (defaults to
    ``address``; never None after construction); ``local_address`` an optional host (no port)
    that outgoing connections bind to. Construction validates and raises
    :class:`ClusterSpecError`.
    """

    id: int
    address: tuple[str, int]
    # Declared without None so readers get a precise type; __post_init__ fills the default.
    listen_address: tuple[str, int] = None  # type: ignore[assignment]
    local_address: str | None = None

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_NODE_ID)
        object.__setattr__(self, "address", _check_address_tuple("address", self.address))
        listen = self.address if self.listen_address is None else self.listen_address
        object.__setattr__(self, "listen_address", _check_address_tuple("listen_address", listen))
        if self.local_address is not None:
            host = _check_str("local_address", self.local_address)
            object.__setattr__(
                self, "local_address", _check_host("local_address", host, "a host without a port")
            )

    @classmethod
    def from_json(cls, where: str, data: object) -> NodeSpec:
        """A node from its JSON object; ``where`` is its path in the spec for error messages.

        Raises :class:`ClusterSpecError` naming the field.
        """
        if not isinstance(data, Mapping):
            raise _fail(where, f"expected an object with 'id' and 'address', got {_show(data)}")
        unknown = sorted(set(data) - _NODE_FIELDS)
        if unknown:
            raise _fail(where, f"unknown field(s) {', '.join(map(repr, unknown))}")
        for required in ("id", "address"):
            if required not in data:
                raise _fail(f"{where}.{required}", "missing")
        node_id = _check_int(f"{where}.id", data["id"], 0, MAX_NODE_ID)
        address = _parse_address(f"{where}.address", data["address"])
        listen = data.get("listen_address")
        listen_address = (
            address if listen is None else _parse_address(f"{where}.listen_address", listen)
        )
        local = data.get("local_address")
        local_address = None
        if local is not None:
            local_address = _check_host(
                f"{where}.local_address",
                _check_str(f"{where}.local_address", local),
                "a host name or IP address without a port",
            )
        return cls(node_id, address, listen_address, local_address)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``listen_address`` is omitted when it equals ``address``."""
        out: dict[str, Any] = {"id": self.id, "address": _format_address(self.address)}
        if self.listen_address != self.address:
            out["listen_address"] = _format_address(self.listen_address)
        if self.local_address is not None:
            out["local_address"] = self.local_address
        return out


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """A validated cluster spec (see the module docstring for its invariants).

    Build one with :meth:`load` (a JSON file) or :meth:`from_dict` (parsed JSON); direct
    construction validates the same invariants. Immutable and comparable; ``base_dir`` is where
    relative credential paths are resolved (None: the current directory at use).
    """

    nodes: tuple[NodeSpec, ...]
    node_key_path: str | None = None
    node_cert_path: str | None = None
    cluster_cert_path: str | None = None
    # Inline PEM stays out of repr(): a private key must never land in a log line.
    node_key_pem: str | None = field(default=None, repr=False)
    node_cert_pem: str | None = field(default=None, repr=False)
    cluster_cert_pem: str | None = field(default=None, repr=False)
    net_ticktime: float = DEFAULT_NET_TICKTIME
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    pending_messages: int = DEFAULT_PENDING_MESSAGES
    pending_bytes: int = DEFAULT_PENDING_BYTES
    registry_frame_claims: int = DEFAULT_FRAME_CLAIMS
    registry_peer_claims: int = DEFAULT_PEER_CLAIMS
    registry_snapshot_timeout: float = DEFAULT_SNAPSHOT_TIMEOUT
    registry_notice_interval: float = DEFAULT_NOTICE_INTERVAL
    outbound_bytes: int = DEFAULT_OUTBOUND_BYTES
    handshakes: int = DEFAULT_HANDSHAKES
    handshakes_per_ip: int = DEFAULT_HANDSHAKES_PER_IP
    base_dir: Path | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, (tuple, list)) or not self.nodes:
            raise _fail("nodes", f"must be a non-empty list of nodes, got {_show(self.nodes)}")
        object.__setattr__(self, "nodes", tuple(self.nodes))
        first_index: dict[int, int] = {}
        first_address: dict[tuple[str, int], int] = {}
        for index, node in enumerate(self.nodes):
            if not isinstance(node, NodeSpec):
                raise _fail(f"nodes[{index}]", f"must be a NodeSpec, got {_show(node)}")
            if node.id in first_index:
                raise _fail(
                    f"nodes[{index}].id",
                    f"duplicate id {node.id} (also nodes[{first_index[node.id]}])",
                )
            if node.address in first_address:
                raise _fail(
                    f"nodes[{index}].address",
                    f"duplicate address {_format_address(node.address)} "
                    f"(also nodes[{first_address[node.address]}])",
                )
            first_index[node.id] = index
            first_address[node.address] = index
        for path_field, pem_field, _ in _CREDENTIALS:
            path, pem = getattr(self, path_field), getattr(self, pem_field)
            if path is not None:
                _check_path_template(path_field, path)
            if pem is not None:
                _check_str(pem_field, pem)
            if path is None and pem is None:
                raise _fail(path_field, f"missing (give {path_field} or {pem_field})")
        object.__setattr__(
            self,
            "net_ticktime",
            _check_number("net_ticktime", self.net_ticktime, MIN_NET_TICKTIME, MAX_NET_TICKTIME),
        )
        _check_int(
            "max_message_bytes",
            self.max_message_bytes,
            MIN_MAX_MESSAGE_BYTES,
            MAX_MAX_MESSAGE_BYTES,
        )
        _check_int("pending_messages", self.pending_messages, 0)
        _check_int("pending_bytes", self.pending_bytes, 0)
        _check_int("registry_frame_claims", self.registry_frame_claims, 1, MAX_REGISTRY_FRAME_CLAIMS)
        _check_int("registry_peer_claims", self.registry_peer_claims, 1, MAX_REGISTRY_PEER_CLAIMS)
        for name, low, high in (
            ("registry_snapshot_timeout", MIN_REGISTRY_SNAPSHOT_TIMEOUT, MAX_REGISTRY_SNAPSHOT_TIMEOUT),
            ("registry_notice_interval", 0.0, MAX_REGISTRY_NOTICE_INTERVAL),
        ):
            object.__setattr__(self, name, _check_number(name, getattr(self, name), low, high))
        _check_int("outbound_bytes", self.outbound_bytes, 0)
        if self.outbound_bytes < self.max_message_bytes + _MESSAGE_OVERHEAD:
            raise _fail("outbound_bytes", f"must be at least max_message_bytes + {_MESSAGE_OVERHEAD} "
                        f"= {self.max_message_bytes + _MESSAGE_OVERHEAD} (the largest message "
                        f"frame), got {self.outbound_bytes}")
        _check_int("handshakes", self.handshakes, 1)
        _check_int("handshakes_per_ip", self.handshakes_per_ip, 1)
        if self.base_dir is not None:
            object.__setattr__(self, "base_dir", Path(self.base_dir))

    # ----------------------------------------------------------------- building

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None
    ) -> ClusterSpec:
        """Validate parsed JSON (the format in API.md) and build a spec.

        ``base_dir`` is the folder relative paths are resolved against (None: the current
        directory at the time credentials are loaded). Raises :class:`ClusterSpecError` naming
        the first offending field.
        """
        if not isinstance(data, Mapping):
            raise _fail("spec", f"expected a JSON object, got {_show(data)}")
        unknown = sorted(str(key) for key in set(data) - _TOP_FIELDS)
        if unknown:
            raise _fail("spec", f"unknown field(s) {', '.join(map(repr, unknown))}")
        if "nodes" not in data:
            raise _fail("nodes", "missing")
        raw_nodes = data["nodes"]
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise _fail("nodes", f"must be a non-empty list of nodes, got {_show(raw_nodes)}")
        nodes = tuple(NodeSpec.from_json(f"nodes[{i}]", raw) for i, raw in enumerate(raw_nodes))
        kwargs: dict[str, Any] = {}
        for path_field, pem_field, _ in _CREDENTIALS:
            if data.get(path_field) is not None:
                kwargs[path_field] = _check_path_template(path_field, data[path_field])
            if data.get(pem_field) is not None:
                kwargs[pem_field] = _check_str(pem_field, data[pem_field])
        for name in ("net_ticktime", "max_message_bytes", "pending_messages", "pending_bytes",
                     *_REGISTRY_TUNING, "outbound_bytes", "handshakes", "handshakes_per_ip"):
            if name in data:
                kwargs[name] = data[name]  # range-checked by __post_init__, named the same
        return cls(nodes=nodes, base_dir=None if base_dir is None else Path(base_dir), **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClusterSpec:
        """Read and validate a JSON spec file; relative paths in it are relative to its folder.

        The JSON must be strict: no duplicate keys, no NaN/Infinity. Raises
        :class:`ClusterSpecError` whose message starts with the file's path, for an unreadable
        file, invalid JSON or an invalid spec (then also naming the field).
        """
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ClusterSpecError(f"{file}: cannot read cluster spec: {_os_reason(exc)}") from None
        try:
            data = json.loads(
                text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant
            )
        except (ValueError, RecursionError) as exc:
            raise ClusterSpecError(f"{file}: invalid JSON: {exc}") from None
        try:
            return cls.from_dict(data, base_dir=file.absolute().parent)
        except ClusterSpecError as exc:
            raise ClusterSpecError(f"{file}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``ClusterSpec.from_dict(spec.to_dict(), spec.base_dir) == spec``.

        Fields that are None and tuning values equal to their defaults are left out, so a spec
        written by ``reign_init`` looks like the example in API.md.
        """
        out: dict[str, Any] = {"nodes": [node.to_dict() for node in self.nodes]}
        for path_field, pem_field, _ in _CREDENTIALS:
            for name in (path_field, pem_field):
                if getattr(self, name) is not None:
                    out[name] = getattr(self, name)
        for spec_field in dataclasses.fields(self):
            if spec_field.name in (
                "net_ticktime",
                "max_message_bytes",
                "pending_messages",
                "pending_bytes",
                *_REGISTRY_TUNING,
                "outbound_bytes",
                "handshakes",
                "handshakes_per_ip",
            ):
                value = getattr(self, spec_field.name)
                if value != spec_field.default:
                    out[spec_field.name] = value
        return out

    # ----------------------------------------------------------------- using

    @property
    def node_ids(self) -> tuple[int, ...]:
        """The node ids, in spec order."""
        return tuple(node.id for node in self.nodes)

    def node(self, node_id: int) -> NodeSpec:
        """The :class:`NodeSpec` with id ``node_id``; :class:`ClusterSpecError` if absent."""
        if type(node_id) is int:  # not bool, not a numeric string
            for node in self.nodes:
                if node.id == node_id:
                    return node
        ids = ", ".join(str(i) for i in self.node_ids)
        raise _fail("nodes", f"no node with id {_show(node_id)} (ids: {ids})")

    def credential_path(self, path_field: str, node_id: int) -> Path | None:
        """Where ``path_field`` (e.g. ``"node_key_path"``) points for ``node_id``.

        ``%d`` is replaced by the node id; a relative result is joined to ``base_dir``. Returns
        None when the spec gives no path for that field.
        """
        if path_field not in {triple[0] for triple in _CREDENTIALS}:
            raise ValueError(f"not a credential path field: {path_field!r}")
        template = getattr(self, path_field)
        if template is None:
            return None
        path = Path(_expand(template, node_id))
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def load_credentials(self, node_id: int, *, verify: bool = True) -> tuple[bytes, bytes, bytes]:
        """Read node ``node_id``'s TLS material: ``(cert_pem, key_pem, ca_pem)``.

        Inline ``*_pem`` fields win over paths. Each value is checked to be PEM of the right kind
        (certificate or unencrypted private key), and a node key read from a file must not be
        accessible to group or others (any bit of ``mode & 0o077``; see
        :mod:`reign._config.keyfiles`; inline PEM has no mode). With ``verify`` (the default) it
        is also checked that the key belongs to the certificate, that the cluster certificate
        signed it and that it identifies node ``node_id``, then that the cluster certificate and
        the node certificate are both within their validity dates now, so a misconfigured node
        fails here with a clear message instead of at every handshake.

        ``verify=False`` skips exactly the checks a peer repeats at handshake (the fit and the
        dates): it exists to build deliberately mismatched or expired nodes for tests of peer
        rejection. It never skips the key-file mode check, which protects this node's secret and
        which no peer can make up for.

        Raises :class:`ClusterSpecError` naming the field (and the path, for files) for a node
        id not in the spec, an unreadable file, a key file with loose permissions (with the mode
        and the ``chmod`` that fixes it), text that is not the right PEM, or a failed check (the
        dates one names not-before, not-after and now, in UTC).
        """
        self.node(node_id)
        values: dict[str, bytes] = {}
        wheres: dict[str, str] = {}
        for path_field, pem_field, kind in _CREDENTIALS:
            inline = getattr(self, pem_field)
            if inline is not None:
                where = pem_field
                try:
                    data = inline.encode("ascii")
                except UnicodeEncodeError:
                    raise _fail(where, "PEM text must be ASCII") from None
            else:
                path = self.credential_path(path_field, node_id)
                assert path is not None  # __post_init__ guarantees a path or inline PEM
                where = f"{path_field} ({path})"
                try:
                    data, mode = _keyfiles.read_credential_file(path)
                except OSError as exc:
                    raise _fail(where, f"cannot read: {_os_reason(exc)}") from None
                if kind == "private key":
                    try:
                        _keyfiles.check_key_mode(path, mode)
                    except _keyfiles.LooseKeyError as exc:
                        raise _fail(where, str(exc)) from None
            try:
                if kind == "certificate":
                    if not data.lstrip().startswith(b"-----BEGIN"):
                        raise ValueError("no '-----BEGIN' armour")
                    _certs.load_certificate(data)
                else:
                    _certs.load_private_key(data)
            except ValueError as exc:
                raise _fail(where, f"not a PEM {kind}: {exc}") from None
            values[pem_field] = data
            wheres[pem_field] = where
        cert, key, ca = values["node_cert_pem"], values["node_key_pem"], values["cluster_cert_pem"]
        if verify:
            cert_where = wheres["node_cert_pem"]
            try:
                found = _certs.check_node_credentials(cert, key, ca)
            except (ValueError, HandshakeError) as exc:
                raise _fail(cert_where, str(exc)) from None
            if found != node_id:
                raise _fail(cert_where, f"certificate identifies node {found}, not node {node_id}")
            # The CA first: when it has expired, the node certificate (never issued to outlive
            # it) usually has too, and a new CA is the fix for both.
            _check_dates(wheres["cluster_cert_pem"], ca, _CA_RENEWAL)
            _check_dates(cert_where, cert, _NODE_RENEWAL)
        return cert, key, ca


# What to do about an expired certificate, appended to the dates. reign_init reuses an existing
# CA and node files and only issues what is missing (see its module docstring).
_CA_RENEWAL = "make a new CA and node certificates (reign_init --force does both)"
_NODE_RENEWAL = (
    "issue a new one from the cluster CA (with reign_init: delete this certificate and its key, "
    "then run it again)"
)
_CLOCK_HINT = "check this machine's clock"


def _check_dates(where: str, pem: bytes, renewal: str) -> None:
    try:
        _certs.check_validity(pem)
    except _certs.ValidityError as exc:
        raise _fail(where, f"{exc}; {renewal if exc.expired else _CLOCK_HINT}") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
