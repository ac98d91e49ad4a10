"""reign._spec.ClusterSpec: parsing, strict validation (errors name their field), credentials."""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

import reign
from reign._config.certs import CLOCK_SKEW, create_ca, create_node_certificate
from reign._config.keyfiles import MAX_CREDENTIAL_BYTES
from reign._config.spec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_NET_TICKTIME,
    DEFAULT_PENDING_BYTES,
    DEFAULT_PENDING_MESSAGES,
    ClusterSpec,
    NodeSpec,
)
from reign._errors import ClusterSpecError
from reign.testing import write_key

BASE: dict[str, Any] = {
    "nodes": [{"id": 1, "address": "127.0.0.1:20000"}, {"id": 2, "address": "127.0.0.1:20001"}],
    "node_key_path": "reign_node.%d.key",
    "node_cert_path": "reign_node.%d.crt",
    "cluster_cert_path": "reign_ca.crt",
}


def _spec(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    return data


def _with_node(index: int, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is _DROP:
            del data["nodes"][index][key]
        else:
            data["nodes"][index][key] = value
    return data


_DROP = object()


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    ca_cert, ca_key = create_ca()
    other_cert, other_key = create_ca()
    out = {"ca": ca_cert, "ca_key": ca_key, "other_ca": other_cert}
    for n in (1, 2):
        out[f"cert{n}"], out[f"key{n}"] = create_node_certificate(ca_cert, ca_key, n)
    out["foreign_cert1"], out["foreign_key1"] = create_node_certificate(other_cert, other_key, 1)
    return out


def _write_pki(folder: Path, pki: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reign_ca.crt").write_bytes(pki["ca"])
    for n in (1, 2):
        (folder / f"reign_node.{n}.crt").write_bytes(pki[f"cert{n}"])
        write_key(folder / f"reign_node.{n}.key", pki[f"key{n}"])  # 0600, as reign_init


# --------------------------------------------------------------------------- valid specs


def test_valid_spec_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(BASE))
    spec = ClusterSpec.load(path)
    assert spec.node_ids == (1, 2)
    assert spec.node(2) == NodeSpec(2, ("127.0.0.1", 20001))
    assert spec.node(2).listen_address == ("127.0.0.1", 20001)
    assert spec.node(2).local_address is None
    assert spec.net_ticktime == DEFAULT_NET_TICKTIME == 60.0
    assert spec.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    assert spec.pending_messages == DEFAULT_PENDING_MESSAGES == 10_000
    assert spec.pending_bytes == DEFAULT_PENDING_BYTES == 16 * 1024 * 1024
    assert spec.base_dir == tmp_path.absolute()


def test_optional_fields_and_ipv6() -> None:
    data = _spec(net_ticktime=2.5, max_message_bytes=1024, pending_messages=0, pending_bytes=0)
    data["nodes"] = [
        {
            "id": 0,
            "address": "[::1]:1",
            "listen_address": "0.0.0.0:65535",
            "local_address": "127.0.0.2",
        },
        {"id": 255, "address": "node-b.example.com:20001", "local_address": "[fe80::1]"},
        {"id": 7, "address": "10.0.0.7:20002", "listen_address": "[::]:20002"},
    ]
    spec = ClusterSpec.from_dict(data)
    assert spec.node(0) == NodeSpec(0, ("::1", 1), ("0.0.0.0", 65535), "127.0.0.2")
    assert spec.node(255).address == ("node-b.example.com", 20001)
    assert spec.node(255).local_address == "fe80::1"
    assert spec.node(7).listen_address == ("::", 20002)
    assert spec.net_ticktime == 2.5
    assert (spec.max_message_bytes, spec.pending_messages, spec.pending_bytes) == (1024, 0, 0)


def test_to_dict_round_trips(tmp_path: Path) -> None:
    data = _spec(net_ticktime=5, pending_bytes=123)
    data["nodes"][0]["listen_address"] = "[::]:20000"
    data["nodes"][1]["local_address"] = "::1"
    spec = ClusterSpec.from_dict(data, base_dir=tmp_path)
    out = spec.to_dict()
    assert ClusterSpec.from_dict(json.loads(json.dumps(out)), base_dir=tmp_path) == spec
    assert out["nodes"][0] == {
        "id": 1,
        "address": "127.0.0.1:20000",
        "listen_address": "[::]:20000",
    }
    assert out["net_ticktime"] == 5.0 and out["pending_bytes"] == 123
    assert "max_message_bytes" not in out  # defaults are left out
    assert ClusterSpec.from_dict(BASE).to_dict() == BASE


def test_spec_objects_are_frozen() -> None:
    spec = ClusterSpec.from_dict(BASE)
    with pytest.raises(AttributeError):
        spec.net_ticktime = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        spec.nodes[0].id = 3  # type: ignore[misc]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ClusterSpecError, match=r"^nodes\[1\]\.id: duplicate id 1"):
        ClusterSpec(
            nodes=(NodeSpec(1, ("h", 1)), NodeSpec(1, ("h", 2))),
            node_key_path="k",
            node_cert_path="c",
            cluster_cert_path="ca",
        )
    with pytest.raises(ClusterSpecError, match=r"^id:"):
        NodeSpec(256, ("h", 1))
    with pytest.raises(ClusterSpecError, match=r"^address"):
        NodeSpec(1, ("h", 0))
    with pytest.raises(ClusterSpecError, match=r"^node_key_path: missing"):
        ClusterSpec(nodes=(NodeSpec(1, ("h", 1)),), node_cert_path="c", cluster_cert_path="ca")


def test_node_lookup() -> None:
    spec = ClusterSpec.from_dict(BASE)
    assert spec.node(1).address == ("127.0.0.1", 20000)
    for missing in (3, 0, True, "1"):
        with pytest.raises(ClusterSpecError, match=r"nodes: no node with id"):
            spec.node(missing)  # type: ignore[arg-type]


def test_repr_never_shows_inline_private_key(pki: dict[str, bytes]) -> None:
    spec = ClusterSpec.from_dict(_spec(node_key_pem=pki["key1"].decode()))
    assert "PRIVATE KEY" not in repr(spec)


# --------------------------------------------------------------------------- invalid specs

BAD_SPECS: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], r"^spec: expected a JSON object"),
    ("unknown top-level", _spec(colour="blue"), r"^spec: unknown field\(s\) 'colour'"),
    ("two unknown", _spec(b=1, a=2), r"^spec: unknown field\(s\) 'a', 'b'"),
    ("no nodes", _spec(nodes=_DROP), r"^nodes: missing"),
    ("empty nodes", _spec(nodes=[]), r"^nodes: must be a non-empty list"),
    ("nodes object", _spec(nodes={"1": "x"}), r"^nodes: must be a non-empty list"),
    ("node not object", _spec(nodes=["127.0.0.1:1"]), r"^nodes\[0\]: expected an object"),
    ("unknown node field", _with_node(1, port=3), r"^nodes\[1\]: unknown field\(s\) 'port'"),
    ("missing id", _with_node(0, id=_DROP), r"^nodes\[0\]\.id: missing"),
    ("missing address", _with_node(1, address=_DROP), r"^nodes\[1\]\.address: missing"),
    ("duplicate id", _with_node(1, id=1), r"^nodes\[1\]\.id: duplicate id 1"),
    ("id bool", _with_node(0, id=True), r"^nodes\[0\]\.id: must be an integer in 0\.\.255"),
    ("id float", _with_node(0, id=1.0), r"^nodes\[0\]\.id: must be an integer"),
    ("id string", _with_node(0, id="1"), r"^nodes\[0\]\.id: must be an integer"),
    ("id negative", _with_node(0, id=-1), r"^nodes\[0\]\.id: must be an integer"),
    ("id too big", _with_node(0, id=256), r"^nodes\[0\]\.id: must be an integer"),
    (
        "address no port",
        _with_node(0, address="127.0.0.1"),
        r"^nodes\[0\]\.address: expected 'host:port'",
    ),
    ("address number", _with_node(0, address=20000), r"^nodes\[0\]\.address: expected 'host:port'"),
    (
        "address empty host",
        _with_node(0, address=":20000"),
        r"^nodes\[0\]\.address: expected 'host:port'",
    ),
    (
        "address bare v6",
        _with_node(0, address="::1:20000"),
        r"^nodes\[0\]\.address: expected 'host:port'",
    ),
    (
        "address bad v6",
        _with_node(0, address="[zz::1]:20000"),
        r"^nodes\[0\]\.address: .*not an IPv6",
    ),
    (
        "address v6 no port",
        _with_node(0, address="[::1]"),
        r"^nodes\[0\]\.address: expected 'host:port'",
    ),
    (
        "port zero",
        _with_node(0, address="127.0.0.1:0"),
        r"^nodes\[0\]\.address: port must be 1\.\.65535",
    ),
    (
        "port too big",
        _with_node(0, address="127.0.0.1:65536"),
        r"^nodes\[0\]\.address: port must be",
    ),
    ("port text", _with_node(0, address="127.0.0.1:http"), r"^nodes\[0\]\.address: port must be"),
    ("port sign", _with_node(0, address="127.0.0.1:+80"), r"^nodes\[0\]\.address: port must be"),
    ("port zeros", _with_node(0, address="127.0.0.1:080"), r"^nodes\[0\]\.address: port must be"),
    (
        "host spaces",
        _with_node(0, address="my host:80"),
        r"^nodes\[0\]\.address: expected 'host:port'",
    ),
    (
        "host bad ipv4",
        _with_node(0, address="999.1.1.1:80"),
        r"^nodes\[0\]\.address: expected 'host:port'",
    ),
    (
        "duplicate address",
        _with_node(1, address="127.0.0.1:20000"),
        r"^nodes\[1\]\.address: duplicate address",
    ),
    (
        "listen bad",
        _with_node(1, listen_address="0.0.0.0"),
        r"^nodes\[1\]\.listen_address: expected 'host:port'",
    ),
    (
        "local with port",
        _with_node(0, local_address="127.0.0.1:5"),
        r"^nodes\[0\]\.local_address: expected",
    ),
    (
        "local empty",
        _with_node(0, local_address=""),
        r"^nodes\[0\]\.local_address: must be a non-empty",
    ),
    (
        "local number",
        _with_node(0, local_address=5),
        r"^nodes\[0\]\.local_address: must be a non-empty",
    ),
    (
        "no key",
        _spec(node_key_path=_DROP),
        r"^node_key_path: missing \(give node_key_path or node_key_pem\)",
    ),
    ("no cert", _spec(node_cert_path=_DROP), r"^node_cert_path: missing"),
    ("no ca", _spec(cluster_cert_path=_DROP), r"^cluster_cert_path: missing"),
    ("path number", _spec(node_key_path=3), r"^node_key_path: must be a non-empty string"),
    ("path empty", _spec(cluster_cert_path=""), r"^cluster_cert_path: must be a non-empty string"),
    ("path bad percent", _spec(node_cert_path="node.%s.crt"), r"^node_cert_path: only %d"),
    ("path trailing percent", _spec(node_cert_path="node%"), r"^node_cert_path: only %d"),
    (
        "pem not string",
        _spec(cluster_cert_pem=["x"]),
        r"^cluster_cert_pem: must be a non-empty string",
    ),
    ("ticktime small", _spec(net_ticktime=0.5), r"^net_ticktime: must be a number >= 1"),
    ("ticktime string", _spec(net_ticktime="60"), r"^net_ticktime: must be a number >= 1"),
    ("ticktime bool", _spec(net_ticktime=True), r"^net_ticktime: must be a number >= 1"),
    ("ticktime null", _spec(net_ticktime=None), r"^net_ticktime: must be a number >= 1"),
    ("ticktime huge", _spec(net_ticktime=1e300), r"^net_ticktime: must be a number >= 1"),
    (
        "max msg small",
        _spec(max_message_bytes=1023),
        r"^max_message_bytes: must be an integer in 1024\.\.",
    ),
    ("max msg big", _spec(max_message_bytes=256 * 1024 * 1024 + 1), r"^max_message_bytes: must be"),
    ("max msg float", _spec(max_message_bytes=2048.0), r"^max_message_bytes: must be an integer"),
    ("pending negative", _spec(pending_messages=-1), r"^pending_messages: must be an integer >= 0"),
    ("pending bool", _spec(pending_messages=False), r"^pending_messages: must be an integer >= 0"),
    ("pending bytes", _spec(pending_bytes=-5), r"^pending_bytes: must be an integer >= 0"),
]


@pytest.mark.parametrize(
    ("data", "pattern"), [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS]
)
def test_invalid_specs_name_the_field(data: Any, pattern: str) -> None:
    with pytest.raises(ClusterSpecError, match=pattern):
        ClusterSpec.from_dict(data)


def test_load_prefixes_errors_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(_with_node(1, id=1)))
    with pytest.raises(ClusterSpecError) as info:
        ClusterSpec.load(path)
    assert str(info.value) == f"{path}: nodes[1].id: duplicate id 1 (also nodes[0])"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("{", "invalid JSON"),
        ("", "invalid JSON"),
        ('{"nodes": [], "nodes": []}', "invalid JSON: duplicate key 'nodes'"),
        ('{"net_ticktime": NaN}', "invalid JSON: NaN is not allowed"),
        ('{"nodes": [{"id": 1, "id": 2}]}', "invalid JSON: duplicate key 'id'"),
        ("[" * 100_000, "invalid JSON"),
    ],
)
def test_invalid_json_names_the_file(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(text)
    with pytest.raises(ClusterSpecError, match=f"^{re.escape(str(path))}: {pattern}"):
        ClusterSpec.load(path)


def test_unreadable_spec_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        ClusterSpecError, match=f"^{re.escape(str(tmp_path / 'nope.json'))}: cannot read"
    ):
        ClusterSpec.load(tmp_path / "nope.json")
    with pytest.raises(ClusterSpecError, match=f"^{re.escape(str(tmp_path))}: cannot read"):
        ClusterSpec.load(tmp_path)
    (tmp_path / "latin1.json").write_bytes(b'{"nodes": "\xff"}')
    with pytest.raises(ClusterSpecError, match="cannot read"):
        ClusterSpec.load(tmp_path / "latin1.json")


# --------------------------------------------------------------------------- credentials


def test_relative_paths_resolve_against_the_spec_folder(
    tmp_path: Path, pki: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "deploy"
    _write_pki(folder / "keys", pki)
    data = _spec(
        node_key_path="keys/reign_node.%d.key",
        node_cert_path="keys/reign_node.%d.crt",
        cluster_cert_path=str(folder / "keys" / "reign_ca.crt"),  # absolute stays absolute
    )
    (folder / "cluster.json").write_text(json.dumps(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = ClusterSpec.load(Path("..") / "deploy" / "cluster.json")
    key_path = spec.credential_path("node_key_path", 2)
    assert key_path is not None and key_path.is_absolute()
    assert os.path.samefile(key_path, folder / "keys" / "reign_node.2.key")
    for n in (1, 2):
        assert spec.load_credentials(n) == (pki[f"cert{n}"], pki[f"key{n}"], pki["ca"])
    # Still the spec's folder after another chdir: base_dir was made absolute at load time.
    monkeypatch.chdir(tmp_path)
    assert spec.load_credentials(1)[0] == pki["cert1"]


def test_percent_d_substitution_and_escape(tmp_path: Path, pki: dict[str, bytes]) -> None:
    spec = ClusterSpec.from_dict(_spec(node_key_path="n%d/%d-100%%.key"), base_dir=tmp_path)
    assert spec.credential_path("node_key_path", 7) == tmp_path / "n7" / "7-100%.key"
    assert spec.credential_path("cluster_cert_path", 7) == tmp_path / "reign_ca.crt"
    unbased = ClusterSpec.from_dict(BASE)
    assert unbased.credential_path("node_cert_path", 2) == Path("reign_node.2.crt")
    with pytest.raises(ValueError):
        spec.credential_path("node_key_pem", 1)


def test_paths_without_base_dir_are_relative_to_the_working_dir(
    tmp_path: Path, pki: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_pki(tmp_path, pki)
    monkeypatch.chdir(tmp_path)
    assert ClusterSpec.from_dict(BASE).load_credentials(2) == (pki["cert2"], pki["key2"], pki["ca"])


def test_inline_pem_wins_over_paths(tmp_path: Path, pki: dict[str, bytes]) -> None:
    data = _spec(
        node_key_pem=pki["key1"].decode(),
        node_cert_pem=pki["cert1"].decode(),
        cluster_cert_pem=pki["ca"].decode(),
    )
    # The paths point at nothing; inline text is used, so nothing is read.
    spec = ClusterSpec.from_dict(data, base_dir=tmp_path / "missing")
    assert spec.load_credentials(1) == (pki["cert1"], pki["key1"], pki["ca"])
    only_inline = {
        "nodes": BASE["nodes"],
        "node_key_pem": pki["key1"].decode(),
        "node_cert_pem": pki["cert1"].decode(),
        "cluster_cert_pem": pki["ca"].decode(),
    }
    assert ClusterSpec.from_dict(only_inline).load_credentials(1)[1] == pki["key1"]


def test_load_credentials_unknown_node(tmp_path: Path, pki: dict[str, bytes]) -> None:
    _write_pki(tmp_path, pki)
    with pytest.raises(ClusterSpecError, match="no node with id 3"):
        ClusterSpec.from_dict(BASE, base_dir=tmp_path).load_credentials(3)


def test_load_credentials_missing_file_names_field_and_path(
    tmp_path: Path, pki: dict[str, bytes]
) -> None:
    _write_pki(tmp_path, pki)
    (tmp_path / "reign_node.2.key").unlink()
    spec = ClusterSpec.from_dict(BASE, base_dir=tmp_path)
    spec.load_credentials(1)
    with pytest.raises(ClusterSpecError) as info:
        spec.load_credentials(2)
    message = str(info.value)
    assert message.startswith(f"node_key_path ({tmp_path / 'reign_node.2.key'}): cannot read")


@pytest.mark.parametrize(
    ("file", "content", "field"),
    [
        ("reign_node.1.key", b"hello", "node_key_path"),
        ("reign_node.1.key", b"", "node_key_path"),
        (
            "reign_node.1.crt",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "node_cert_path",
        ),
        ("reign_ca.crt", b"\x00\x01binary", "cluster_cert_path"),
        ("reign_node.1.crt", "key1", "node_cert_path"),  # a key where a certificate belongs
        ("reign_node.1.key", "cert1", "node_key_path"),  # and the reverse
    ],
)
def test_load_credentials_rejects_non_pem(
    tmp_path: Path, pki: dict[str, bytes], file: str, content: bytes | str, field: str
) -> None:
    _write_pki(tmp_path, pki)
    data = pki[content] if isinstance(content, str) else content
    if file.endswith(".key"):
        write_key(tmp_path / file, data)
    else:
        (tmp_path / file).write_bytes(data)
    with pytest.raises(
        ClusterSpecError, match=rf"^{field} \({re.escape(str(tmp_path / file))}\): not a PEM"
    ):
        ClusterSpec.from_dict(BASE, base_dir=tmp_path).load_credentials(1)


def test_load_credentials_rejects_encrypted_key(tmp_path: Path, pki: dict[str, bytes]) -> None:
    _write_pki(tmp_path, pki)
    key = serialization.load_pem_private_key(pki["key1"], password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    write_key(tmp_path / "reign_node.1.key", encrypted)
    with pytest.raises(ClusterSpecError, match=r"^node_key_path .*encrypted"):
        ClusterSpec.from_dict(BASE, base_dir=tmp_path).load_credentials(1)


def test_inline_pem_errors_name_the_inline_field(pki: dict[str, bytes]) -> None:
    good = {"node_key_pem": pki["key1"].decode(), "node_cert_pem": pki["cert1"].decode()}
    spec = ClusterSpec.from_dict(_spec(cluster_cert_pem="not pem", **good))
    with pytest.raises(ClusterSpecError, match=r"^cluster_cert_pem: not a PEM certificate"):
        spec.load_credentials(1)
    spec = ClusterSpec.from_dict(_spec(node_key_pem="caf\u00e9"))
    with pytest.raises(ClusterSpecError, match=r"^node_key_pem: PEM text must be ASCII"):
        spec.load_credentials(1)


@pytest.mark.parametrize(
    ("cert", "key", "ca", "pattern"),
    [
        ("cert2", "key2", "ca", r"identifies node 2, not node 1"),
        ("cert1", "key2", "ca", r"does not belong"),
        ("foreign_cert1", "foreign_key1", "ca", r"not issued by this cluster"),
        ("cert1", "key1", "other_ca", r"not issued by this cluster"),
    ],
)
def test_load_credentials_verifies_that_they_fit(
    tmp_path: Path, pki: dict[str, bytes], cert: str, key: str, ca: str, pattern: str
) -> None:
    _write_pki(tmp_path, pki)
    (tmp_path / "reign_node.1.crt").write_bytes(pki[cert])
    write_key(tmp_path / "reign_node.1.key", pki[key])
    (tmp_path / "reign_ca.crt").write_bytes(pki[ca])
    spec = ClusterSpec.from_dict(BASE, base_dir=tmp_path)
    with pytest.raises(
        ClusterSpecError,
        match=rf"^node_cert_path \({re.escape(str(tmp_path / 'reign_node.1.crt'))}\): .*{pattern}",
    ):
        spec.load_credentials(1)
    # verify=False hands the mismatched material over (for tests of peer-side rejection).
    assert spec.load_credentials(1, verify=False) == (pki[cert], pki[key], pki[ca])


def test_huge_integer_tuning_value_is_a_spec_error() -> None:
    # Found in review: math.isfinite(10**400) raised OverflowError.
    data = {
        "nodes": [{"id": 1, "address": "127.0.0.1:20000"}],
        "node_key_pem": "x", "node_cert_pem": "x", "cluster_cert_pem": "x",
        "net_ticktime": 10**400,
    }
    with pytest.raises(ClusterSpecError, match="net_ticktime"):
        ClusterSpec.from_dict(data)


# --------------------------------------------------------------------------- key file modes
# Only the mode bits count: CI runs as root, which can read any file whatever its mode.


def _key_spec(tmp_path: Path, pki: dict[str, bytes], key_mode: int) -> ClusterSpec:
    _write_pki(tmp_path, pki)
    (tmp_path / "reign_node.1.key").chmod(key_mode)
    return ClusterSpec.from_dict(BASE, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("loose", "access"),
    [
        (0o644, "readable"),  # what write_bytes makes under the usual umask 022
        (0o640, "readable"),
        (0o604, "readable"),
        (0o620, "writable"),
        (0o601, "accessible"),
    ],
    ids=lambda value: f"{value:04o}" if isinstance(value, int) else value,
)
def test_node_key_with_group_or_other_bits_is_refused_at_start_up(
    tmp_path: Path, pki: dict[str, bytes], loose: int, access: str
) -> None:
    spec = _key_spec(tmp_path, pki, loose)
    key = tmp_path / "reign_node.1.key"
    with pytest.raises(ClusterSpecError) as info:
        reign.create_from_spec(spec, 1)  # fails before anything listens or dials
    assert str(info.value) == (
        f"node_key_path ({key}): private key is {access} by group/others "
        f"(mode {loose:04o}); chmod 600 {key}"
    )
    assert stat.S_IMODE(key.stat().st_mode) == loose  # reported, never changed
    # verify=False skips what a peer re-checks, never this: no peer can protect our key.
    with pytest.raises(ClusterSpecError, match=r"^node_key_path .*chmod 600"):
        spec.load_credentials(1, verify=False)
    spec.load_credentials(2)  # node 2's key (0600) is unaffected


@pytest.mark.parametrize("private", [0o600, 0o400], ids=lambda m: f"{m:04o}")
def test_node_key_private_to_its_owner_is_accepted(
    tmp_path: Path, pki: dict[str, bytes], private: int
) -> None:
    spec = _key_spec(tmp_path, pki, private)
    reign.create_from_spec(spec, 1)
    assert spec.load_credentials(1)[1] == pki["key1"]


def test_certificates_may_be_world_readable_and_inline_keys_have_no_mode(
    tmp_path: Path, pki: dict[str, bytes]
) -> None:
    _write_pki(tmp_path, pki)
    for name in ("reign_ca.crt", "reign_node.1.crt"):
        (tmp_path / name).chmod(0o644)
    (tmp_path / "reign_node.1.key").chmod(0o644)
    # The inline key wins over the loose file, which is then never read.
    spec = ClusterSpec.from_dict(_spec(node_key_pem=pki["key1"].decode()), base_dir=tmp_path)
    assert spec.load_credentials(1) == (pki["cert1"], pki["key1"], pki["ca"])


def test_key_path_naming_a_fifo_or_folder_fails_at_once(
    tmp_path: Path, pki: dict[str, bytes]
) -> None:
    _write_pki(tmp_path, pki)
    key = tmp_path / "reign_node.1.key"
    key.unlink()
    os.mkfifo(key, 0o600)  # opening it for reading would block until a writer came
    spec = ClusterSpec.from_dict(BASE, base_dir=tmp_path)
    where = rf"^node_key_path \({re.escape(str(key))}\): "
    with pytest.raises(ClusterSpecError, match=where + "cannot read: not a regular file"):
        spec.load_credentials(1)
    key.unlink()
    key.mkdir(mode=0o700)
    with pytest.raises(ClusterSpecError, match=r"cannot read: not a regular file"):
        spec.load_credentials(1)


def test_credential_file_larger_than_the_bound_is_refused(
    tmp_path: Path, pki: dict[str, bytes]
) -> None:
    _write_pki(tmp_path, pki)
    with (tmp_path / "reign_ca.crt").open("ab") as handle:
        handle.truncate(MAX_CREDENTIAL_BYTES + 1)
    with pytest.raises(ClusterSpecError, match=r"^cluster_cert_path .*cannot read: .*than the 1048576"):
        ClusterSpec.from_dict(BASE, base_dir=tmp_path).load_credentials(1)


# --------------------------------------------------------------------------- validity dates
# Certificates with chosen validity windows, made with cryptography: a real CA or node
# certificate re-signed with other dates (same subject, key and extensions, so it still fits).

_DAY = datetime.timedelta(days=1)


def _redated(
    cert_pem: bytes,
    signer_key_pem: bytes,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> bytes:
    """``cert_pem`` re-signed by ``signer_key_pem`` with validity ``not_before..not_after``."""
    good = x509.load_pem_x509_certificate(cert_pem)
    builder = (
        x509.CertificateBuilder()
        .subject_name(good.subject)
        .issuer_name(good.issuer)
        .public_key(good.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for ext in good.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    signer = serialization.load_pem_private_key(signer_key_pem, password=None)
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


def _utc(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


_NOW = r"now (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\)"


def _dated_failure(
    tmp_path: Path,
    pki: dict[str, bytes],
    which: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[str, bytes]:
    """Write the pki with the CA (``which == "ca"``) or node 1's certificate re-dated; return
    the message of ``create_from_spec`` for node 1 and the re-dated certificate."""
    _write_pki(tmp_path, pki)
    if which == "ca":
        pem = _redated(pki["ca"], pki["ca_key"], not_before, not_after)
        (tmp_path / "reign_ca.crt").write_bytes(pem)
    else:
        pem = _redated(pki["cert1"], pki["ca_key"], not_before, not_after)
        (tmp_path / "reign_node.1.crt").write_bytes(pem)
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    spec = ClusterSpec.from_dict(BASE, base_dir=tmp_path)
    with pytest.raises(ClusterSpecError) as info:
        reign.create_from_spec(spec, 1)
    message = str(info.value)
    found = re.search(_NOW, message)
    assert found is not None, message
    now = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")
    now = now.replace(tzinfo=datetime.UTC)
    assert before <= now <= datetime.datetime.now(datetime.UTC), message  # "now" is the real now
    # verify=False hands the out-of-date material over (to test that peers refuse it).
    assert pem in spec.load_credentials(1, verify=False)
    return message, pem


_EXPIRED, _NOT_YET = "certificate expired", "certificate is not valid yet"
_RENEW_CA = "make a new CA and node certificates (reign_init --force does both)"
_RENEW_NODE = (
    "issue a new one from the cluster CA "
    "(with reign_init: delete this certificate and its key, then run it again)"
)
_CLOCK = "check this machine's clock"
_HOUR = datetime.timedelta(hours=1)


@pytest.mark.parametrize(
    ("which", "start", "end", "state", "advice"),
    [
        ("ca", -30 * _DAY, -_DAY, _EXPIRED, _RENEW_CA),
        ("ca", _DAY, 30 * _DAY, _NOT_YET, _CLOCK),
        ("node", -30 * _DAY, -_DAY, _EXPIRED, _RENEW_NODE),
        ("node", _HOUR, 30 * _DAY, _NOT_YET, _CLOCK),
    ],
    ids=["expired CA", "not-yet-valid CA", "expired node", "not-yet-valid node"],
)
def test_out_of_date_certificates_are_refused_at_start_up(
    tmp_path: Path,
    pki: dict[str, bytes],
    which: str,
    start: datetime.timedelta,
    end: datetime.timedelta,
    state: str,
    advice: str,
) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    message, pem = _dated_failure(tmp_path, pki, which, now + start, now + end)
    cert = x509.load_pem_x509_certificate(pem)
    field, file = ("cluster_cert_path", "reign_ca.crt")
    if which == "node":
        field, file = ("node_cert_path", "reign_node.1.crt")
    assert message.startswith(
        f"{field} ({tmp_path / file}): {state} (not before {_utc(cert.not_valid_before_utc)}, "
        f"not after {_utc(cert.not_valid_after_utc)}, now "
    ), message
    assert message.endswith(f" UTC); {advice}"), message


def test_expired_ca_is_reported_before_the_node_certificate_it_outlived(
    tmp_path: Path, pki: dict[str, bytes]
) -> None:
    # What a CA that ran out looks like: its node certificates (capped at its notAfter) too.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    _write_pki(tmp_path, pki)
    for name, pem in (("reign_ca.crt", pki["ca"]), ("reign_node.1.crt", pki["cert1"])):
        (tmp_path / name).write_bytes(_redated(pem, pki["ca_key"], now - 30 * _DAY, now - _DAY))
    with pytest.raises(ClusterSpecError, match=r"^cluster_cert_path .*expired .*reign_init --force"):
        reign.create_from_spec(ClusterSpec.from_dict(BASE, base_dir=tmp_path), 1)


def test_inline_out_of_date_certificate_names_the_inline_field(pki: dict[str, bytes]) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    expired_ca = _redated(pki["ca"], pki["ca_key"], now - 30 * _DAY, now - _DAY)
    data = _spec(
        node_key_pem=pki["key1"].decode(),
        node_cert_pem=pki["cert1"].decode(),
        cluster_cert_pem=expired_ca.decode(),
    )
    with pytest.raises(ClusterSpecError, match=r"^cluster_cert_pem: certificate expired \(not before"):
        reign.create_from_spec(data, 1)


def test_a_freshly_issued_certificate_is_valid_at_once(tmp_path: Path) -> None:
    # Issuance backdates notBefore by CLOCK_SKEW: a node started the moment its files are
    # written, or on a machine whose clock is a little behind the issuer's, is not refused.
    ca_cert, ca_key = create_ca()
    cert, key = create_node_certificate(ca_cert, ca_key, 1)
    spec = ClusterSpec.from_dict(
        _spec(
            node_key_pem=key.decode(),
            node_cert_pem=cert.decode(),
            cluster_cert_pem=ca_cert.decode(),
        )
    )
    reign.create_from_spec(spec, 1)
    issued = x509.load_pem_x509_certificate(cert).not_valid_before_utc
    slack = datetime.timedelta(seconds=5)  # time taken since issuing
    assert issued <= datetime.datetime.now(datetime.UTC) - CLOCK_SKEW + slack


def test_registry_tuning_fields() -> None:
    from reign._core.registry_wire import (
        DEFAULT_FRAME_CLAIMS,
        DEFAULT_NOTICE_INTERVAL,
        DEFAULT_PEER_CLAIMS,
        DEFAULT_SNAPSHOT_TIMEOUT,
    )
    from reign._runtime.names import registry_limits

    spec = ClusterSpec.from_dict(BASE)
    assert (spec.registry_frame_claims, spec.registry_peer_claims) == (DEFAULT_FRAME_CLAIMS, DEFAULT_PEER_CLAIMS)
    assert (spec.registry_snapshot_timeout, spec.registry_notice_interval) == (
        DEFAULT_SNAPSHOT_TIMEOUT, DEFAULT_NOTICE_INTERVAL,
    )
    tuned = _spec(registry_frame_claims=100, registry_peer_claims=1000, registry_snapshot_timeout=2,
                  registry_notice_interval=0)
    spec = ClusterSpec.from_dict(tuned)
    assert spec.registry_snapshot_timeout == 2.0 and isinstance(spec.registry_snapshot_timeout, float)
    out = spec.to_dict()
    assert {k: out[k] for k in tuned if k.startswith("registry_")} == {
        "registry_frame_claims": 100, "registry_peer_claims": 1000,
        "registry_snapshot_timeout": 2.0, "registry_notice_interval": 0.0,
    }
    assert ClusterSpec.from_dict(out) == spec
    limits = registry_limits(spec)
    assert (limits.frame_claims, limits.peer_claims, limits.snapshot_timeout, limits.notice_interval) == (
        100, 1000, 2.0, 0.0,
    )
    assert limits.max_frame_bytes == spec.max_message_bytes
    for bad, pattern in [
        ({"registry_frame_claims": 0}, r"^registry_frame_claims: must be an integer in 1\.\.1000000"),
        ({"registry_frame_claims": 5000.0}, r"^registry_frame_claims: must be an integer"),
        ({"registry_frame_claims": 10**6 + 1}, r"^registry_frame_claims: must be an integer"),
        ({"registry_peer_claims": 0}, r"^registry_peer_claims: must be an integer in 1\.\."),
        ({"registry_peer_claims": True}, r"^registry_peer_claims: must be an integer"),
        ({"registry_snapshot_timeout": 0.05}, r"^registry_snapshot_timeout: must be a number >= 0\.1"),
        ({"registry_snapshot_timeout": "30"}, r"^registry_snapshot_timeout: must be a number"),
        ({"registry_snapshot_timeout": 1e300}, r"^registry_snapshot_timeout: must be a number"),
        ({"registry_notice_interval": -1}, r"^registry_notice_interval: must be a number >= 0 and <= 3600"),
        ({"registry_notice_interval": None}, r"^registry_notice_interval: must be a number"),
    ]:
        with pytest.raises(ClusterSpecError, match=pattern):
            ClusterSpec.from_dict(_spec(**bad))
