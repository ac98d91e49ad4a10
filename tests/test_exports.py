"""The public API is exactly what the docs list: every name resolves, nothing else leaks.

Like trio's ``_tests/test_exports.py``: a name added to or dropped from ``reign`` must be added
to or dropped from this list (and from ``docs/api.md``) on purpose.
"""

from __future__ import annotations

import importlib

import reign
import reign.testing

PUBLIC = [
    "Address",
    "call",
    "Caller",
    "CallTimeout",
    "CantGloballyRegisterError",
    "cast",
    "ChildSpec",
    "ClusterSpec",
    "ClusterSpecError",
    "Crash",
    "create_from_spec",
    "create_from_spec_file",
    "DecodeError",
    "Empty",
    "EncodeError",
    "Exit",
    "exit",
    "Failure",
    "GenServer",
    "HandshakeError",
    "IllegalAddressFormatError",
    "Mailbox",
    "MailboxClosed",
    "MailboxClosedError",
    "MailboxID",
    "MultipleClaim",
    "Names",
    "no_clustering",
    "Node",
    "NodeSpec",
    "NodeStatistics",
    "NOREPLY",
    "PeerStatistics",
    "ProtocolError",
    "register_type",
    "RegistrationError",
    "ReignError",
    "run",
    "SelfCallError",
    "send_after",
    "ServerExited",
    "stop",
    "Supervisor",
    "Timer",
]


def test_all_is_the_pinned_list() -> None:
    assert sorted(reign.__all__) == sorted(PUBLIC)
    assert len(set(reign.__all__)) == len(reign.__all__)


def test_every_public_name_resolves_and_is_defined_inside_reign() -> None:
    for name in reign.__all__:
        value = getattr(reign, name)
        assert getattr(value, "__module__", "reign").startswith("reign"), name
    assert set(reign.__all__) <= set(dir(reign))


def test_the_lazy_table_matches_all() -> None:
    assert sorted(reign._EXPORTS) == sorted(reign.__all__)
    for name, module in reign._EXPORTS.items():
        assert getattr(importlib.import_module(module), name) is getattr(reign, name)


def test_unknown_names_raise_attribute_error() -> None:
    try:
        reign.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("reign.NoSuchThing resolved")


def test_errors_share_one_base() -> None:
    errors = [getattr(reign, n) for n in PUBLIC if n.endswith("Error") or n in ("Empty", "Failure", "CallTimeout", "ServerExited")]
    assert all(issubclass(e, reign.ReignError) for e in errors)


def test_version_and_testing_helpers() -> None:
    assert reign.__version__.count(".") == 2
    assert sorted(reign.testing.__all__) == [
        "CA", "free_ports", "make_cluster", "wait_until", "write_key", "write_spec"
    ]
