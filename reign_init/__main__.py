"""``reign_init``: write a cluster's CA, node certificates and a matching ``cluster.json``.

Usage: ``reign_init [--dir certs] [--nodes 2] [--days 365] [--organization NAME] [--force]``

Files written into ``--dir`` (created if missing):

* ``reign_ca.crt`` / ``reign_ca.key``: the cluster CA (see :mod:`reign._config.certs` for identity);
* ``reign_node.N.crt`` / ``reign_node.N.key`` for N = 1..``--nodes``;
* ``cluster.json``: nodes 1..N on ``127.0.0.1``, ports 20000, 20001, ..., pointing at the files
  above by relative paths, only when no ``cluster.json`` exists (or with ``--force``).

Invariants this tool keeps:

* Private keys are never readable by anyone but the owner, not even briefly: every file is
  written to a fresh temporary name in the target folder, created with ``O_CREAT | O_EXCL`` and
  mode 0600 (0644 for certificates and the spec), then atomically renamed over the final name.
  A crash leaves either the old file or the new one, never a torn one (it may leave a key
  whose certificate was not yet written; the next run reports that rather than guessing).
* Without ``--force`` nothing existing is overwritten: the CA is reused byte for byte, existing
  node files are reused, only missing nodes are added. Everything that exists is checked first
  (CA key matches CA certificate; each node key matches its certificate, which the CA signed and
  which names the right node id); any inconsistency -- including a key without its certificate
  or the reverse -- stops the run before anything is written, with exit status 1.
* An existing private key is reused only if group and others have no access to it (mode
  ``& 0o077 == 0``, the test a node applies to its key at start-up, see
  :mod:`reign._config.keyfiles`). A CA key or node key with looser permissions stops the run
  like any other inconsistency, saying the mode and the ``chmod`` that fixes it; the key is never
  chmodded or rewritten (whoever could read it may have, which only its owner can judge: the
  alternative offered is a fresh CA with ``--force``, or deleting a node's files to reissue
  them). A node key is checked too because a node would refuse to start with it.
* ``--force`` regenerates the CA, nodes 1..N and ``cluster.json``.
* Node certificates take the organization of the CA that signs them; ``--organization`` names
  the organization of a newly created CA.
* Errors are one line on stderr starting ``reign_init: `` -- never a traceback. Exit status: 0
  success, 1 failure, 2 bad command line, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from reign._cli import OneLineParser, one_line, os_reason
from reign._config import certs as _certs
from reign._config import keyfiles as _keyfiles
from reign._config.spec import ClusterSpec, NodeSpec
from reign._errors import ClusterSpecError, HandshakeError

PROG = "reign_init"
CA_CERT_FILE = "reign_ca.crt"
CA_KEY_FILE = "reign_ca.key"
NODE_CERT_TEMPLATE = "reign_node.%d.crt"
NODE_KEY_TEMPLATE = "reign_node.%d.key"
SPEC_FILE = "cluster.json"
#: Host and first port of the generated spec: loopback, consecutive ports from 20000 (as the
#: example in API.md), so ``make demo`` runs on one machine out of the box.
SPEC_HOST = "127.0.0.1"
FIRST_PORT = 20000
DEFAULT_DIR = "certs"
DEFAULT_NODES = 2
MAX_NODES = 255  # node ids 1..N must fit the 0..255 id space
KEY_MODE = 0o600
PUBLIC_MODE = 0o644
_FORCE_HINT = "use --force to regenerate everything"
# The other way out of a loose key than chmod, when others may already have read it.
_CA_KEY_FIX = "if others may have read it, make a new CA with --force"
_NODE_KEY_FIX = "if others may have read it, delete %s and %s and run again for a new pair"
_INT_RE = re.compile(r"-?[0-9]{1,12}")


class _Failure(Exception):
    """A run-time failure to report as one line and exit status 1."""



def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"{PROG}: warning: {one_line(text)}", file=sys.stderr, flush=True)



# --------------------------------------------------------------------------- command line



def _bounded_int(low: int, high: int) -> type[int]:
    def parse(text: str) -> int:
        # Plain decimal only: int() would also take " 3", "+3", "3_0" and non-ASCII digits.
        if _INT_RE.fullmatch(text) is None or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(
                f"must be an integer from {low} to {high}, got {text!r}"
            )
        return int(text)

    parse.__name__ = "integer"
    return parse  # type: ignore[return-value]


def _directory(text: str) -> Path:
    if not text or "\x00" in text:
        raise argparse.ArgumentTypeError(f"must be a folder name, got {text!r}")
    return Path(text)


def _organization(text: str) -> str:
    try:
        return _certs.check_organization(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "Create the certificate authority, node certificates and cluster spec for a reign "
            "cluster. Re-running reuses what exists and adds missing nodes."
        ),
    )
    parser.add_argument(
        "--dir",
        type=_directory,
        default=DEFAULT_DIR,
        help=f"folder to write into, created if missing (default: {DEFAULT_DIR})",
    )
    parser.add_argument(
        "--nodes",
        type=_bounded_int(1, MAX_NODES),
        default=DEFAULT_NODES,
        help=f"number of nodes, 1 to {MAX_NODES}; writes node ids 1..N (default: {DEFAULT_NODES})",
    )
    parser.add_argument(
        "--days",
        type=_bounded_int(1, _certs.MAX_DAYS),
        default=_certs.DEFAULT_DAYS,
        help=f"validity of new certificates in days (default: {_certs.DEFAULT_DAYS})",
    )
    parser.add_argument(
        "--organization",
        type=_organization,
        default=_certs.DEFAULT_ORGANIZATION,
        help=(
            "organization of a new CA; node certificates copy the CA's "
            f"(default: {_certs.DEFAULT_ORGANIZATION})"
        ),
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="regenerate the CA, every node 1..N and cluster.json, replacing existing files",
    )
    return parser


# --------------------------------------------------------------------------- files


def _read(path: Path, *, key_fix: str | None = None) -> bytes:
    """The file's bytes; with ``key_fix`` it is a private key and must have no group/other bits.

    ``key_fix`` ends the message for a loose key: the alternative to ``chmod`` for that file.
    """
    try:
        data, mode = _keyfiles.read_credential_file(path)
    except OSError as exc:
        raise _Failure(f"cannot read {path}: {os_reason(exc)}") from None
    if key_fix is not None:
        try:
            _keyfiles.check_key_mode(path, mode)
        except _keyfiles.LooseKeyError as exc:
            raise _Failure(f"{path}: {exc} and run again, or {key_fix}") from None
    return data


def _present(path: Path) -> bool:
    # lexists: a dangling symlink is "something there", not a free name.
    return os.path.lexists(path)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically put ``data`` at ``path`` with exactly ``mode`` (see the module invariants)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        raise _Failure(f"cannot write {path}: {os_reason(exc)}") from None
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # the umask may have narrowed it; make it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise _Failure(f"cannot write {path}: {os_reason(exc)}") from None


def _sync_dir(directory: Path) -> None:
    """Make the renames durable; best effort (not every file system lets a folder be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prepare_dir(directory: Path) -> None:
    if _present(directory) and not directory.is_dir():
        raise _Failure(f"{directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Failure(f"cannot create directory {directory}: {os_reason(exc)}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _Failure(f"cannot write to directory {directory}: permission denied")


def _existing_pair(cert_path: Path, key_path: Path, key_fix: str) -> tuple[bytes, bytes] | None:
    """Both files' bytes, None if neither exists; a lone key or certificate is a failure.

    A key that group or others may access is a failure too (``key_fix``: see :func:`_read`).
    """
    have_cert, have_key = _present(cert_path), _present(key_path)
    if have_cert != have_key:
        found, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise _Failure(f"found {found} but not {missing}; refusing to guess ({_FORCE_HINT})")
    if not have_cert:
        return None
    return _read(cert_path), _read(key_path, key_fix=key_fix)


# --------------------------------------------------------------------------- the run


def _run(args: argparse.Namespace) -> None:
    directory: Path = args.dir
    node_ids = range(1, args.nodes + 1)
    ca_paths = (directory / CA_CERT_FILE, directory / CA_KEY_FILE)
    node_paths = {
        n: (directory / (NODE_CERT_TEMPLATE % n), directory / (NODE_KEY_TEMPLATE % n))
        for n in node_ids
    }
    spec_path = directory / SPEC_FILE
    _prepare_dir(directory)

    # Plan: read and check everything that exists before writing anything.
    ca: tuple[bytes, bytes] | None = None
    existing_nodes: dict[int, tuple[bytes, bytes]] = {}
    if not args.force:
        ca = _existing_pair(*ca_paths, _CA_KEY_FIX)
        if ca is not None:
            try:
                _certs.check_ca_credentials(*ca)
            except ValueError as exc:
                raise _Failure(f"{ca_paths[0]}: {exc} ({_FORCE_HINT})") from None
        for n, (cert_path, key_path) in node_paths.items():
            pair = _existing_pair(cert_path, key_path, _NODE_KEY_FIX % (key_path, cert_path))
            if pair is None:
                continue
            if ca is None:
                raise _Failure(
                    f"found {cert_path} but no signing certificate {ca_paths[0]} ({_FORCE_HINT})"
                )
            try:
                found = _certs.check_node_credentials(pair[0], pair[1], ca[0])
            except (ValueError, HandshakeError) as exc:
                raise _Failure(f"{cert_path}: {exc} ({_FORCE_HINT})") from None
            if found != n:
                raise _Failure(f"{cert_path} identifies node {found}, not node {n} ({_FORCE_HINT})")
            existing_nodes[n] = pair

    # Act.
    try:
        if ca is None:
            ca = _certs.create_ca(organization=args.organization, days=args.days)
            _write(ca_paths[1], ca[1], KEY_MODE)
            _write(ca_paths[0], ca[0], PUBLIC_MODE)
            _say("Signing certificate created")
        else:
            _say("Using existing signing certificate")
        for n, (cert_path, key_path) in node_paths.items():
            if n in existing_nodes:
                _say(f"Using existing certificate for node {n}")
                continue
            cert_pem, key_pem = _certs.create_node_certificate(ca[0], ca[1], n, days=args.days)
            _write(key_path, key_pem, KEY_MODE)
            _write(cert_path, cert_pem, PUBLIC_MODE)
            _say(f"Constructed certificate for node {n}")
    except ValueError as exc:  # e.g. the existing CA has expired
        raise _Failure(str(exc)) from None

    if args.force or not _present(spec_path):
        spec = ClusterSpec(
            nodes=tuple(NodeSpec(n, (SPEC_HOST, FIRST_PORT + n - 1)) for n in node_ids),
            node_key_path=NODE_KEY_TEMPLATE,
            node_cert_path=NODE_CERT_TEMPLATE,
            cluster_cert_path=CA_CERT_FILE,
        )
        text = json.dumps(spec.to_dict(), indent=2) + "\n"
        _write(spec_path, text.encode("utf-8"), PUBLIC_MODE)
        _say(f"Wrote cluster spec {spec_path}")
    else:
        _say(f"Using existing cluster spec {spec_path}")
        _check_existing_spec(spec_path, node_ids)
    _sync_dir(directory)


def _check_existing_spec(spec_path: Path, node_ids: range) -> None:
    """Warn (not fail) when a kept cluster.json is invalid or lacks some of the nodes."""
    try:
        spec = ClusterSpec.load(spec_path)
    except ClusterSpecError as exc:
        _warn(f"kept {spec_path}, but it is not a valid cluster spec: {exc}")
        return
    missing = [n for n in node_ids if n not in spec.node_ids]
    if missing:
        listed = ", ".join(map(str, missing))
        _warn(f"{spec_path} has no entry for node(s) {listed}; add them or re-run with --force")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``reign_init`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Never raises and never prints a traceback: failures print one line to stderr and return 1,
    command-line errors return 2 (``--help`` returns 0), an interrupt returns 130.
    """
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _run(args)
    except _Failure as exc:
        print(f"{PROG}: {one_line(str(exc))}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # last resort: the contract is one line, never a traceback
        print(
            f"{PROG}: unexpected error: {type(exc).__name__}: {one_line(os_reason(exc))}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
