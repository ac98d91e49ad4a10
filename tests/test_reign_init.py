"""reign_init, driven as a real subprocess in temporary folders."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from reign._config.certs import check_node_credentials, node_id_from_certificate
from reign._config.spec import ClusterSpec
from reign_init.__main__ import main

TIMEOUT = 30


def run(*args: str, cwd: Path, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """``python -m reign_init ARGS`` as a real process in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "reign_init", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        umask=umask,
    )


def run_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``main(ARGS)`` in this process with ``cwd`` as working directory: the same code path
    minus interpreter start-up, for the cases beyond those the brief wants as real processes."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(args))
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


def ok(*args: str, cwd: Path, stderr: str = "", process: bool = True) -> list[str]:
    """Run, expect success and exactly ``stderr`` (warnings); return the stdout lines."""
    result = (run if process else run_in_process)(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == stderr
    return result.stdout.splitlines()


def fails(*args: str, cwd: Path, status: int = 1, process: bool = True) -> str:
    """Run, expect failure with exactly one stderr line and no traceback; return that line."""
    result = (run if process else run_in_process)(*args, cwd=cwd)
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reign_init: ")
    return lines[0]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default run (two nodes), made once per module; copy it, never modify it."""
    cwd = tmp_path_factory.mktemp("pristine")
    ok(cwd=cwd)
    return cwd / "certs"


@pytest.fixture
def initialized(tmp_path: Path, pristine: Path) -> Path:
    """``tmp_path`` as if ``reign_init`` had just run there; returns its ``certs`` folder."""
    shutil.copytree(pristine, tmp_path / "certs")  # copy2 keeps the modes
    return tmp_path / "certs"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- happy paths


def test_first_run_writes_everything(tmp_path: Path) -> None:
    out = ok(cwd=tmp_path)
    certs = tmp_path / "certs"
    assert out == [
        "Signing certificate created",
        "Constructed certificate for node 1",
        "Constructed certificate for node 2",
        f"Wrote cluster spec {Path('certs') / 'cluster.json'}",
    ]
    assert sorted(snapshot(certs)) == [
        "cluster.json",
        "reign_ca.crt",
        "reign_ca.key",
        "reign_node.1.crt",
        "reign_node.1.key",
        "reign_node.2.crt",
        "reign_node.2.key",
    ]
    ca = (certs / "reign_ca.crt").read_bytes()
    for n in (1, 2):
        cert = (certs / f"reign_node.{n}.crt").read_bytes()
        x509.load_pem_x509_certificate(cert).verify_directly_issued_by(
            x509.load_pem_x509_certificate(ca)
        )
        assert check_node_credentials(cert, (certs / f"reign_node.{n}.key").read_bytes(), ca) == n


def test_file_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    for umask, folder in ((0o077, "a"), (0o000, "b")):
        result = run("--dir", folder, cwd=tmp_path, umask=umask)
        assert result.returncode == 0, result.stderr
        certs = tmp_path / folder
        for name in ("reign_ca.key", "reign_node.1.key", "reign_node.2.key"):
            assert mode(certs / name) == 0o600, (umask, name)
        for name in ("reign_ca.crt", "reign_node.1.crt", "reign_node.2.crt", "cluster.json"):
            assert mode(certs / name) == 0o644, (umask, name)
        assert not [p for p in certs.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cluster_json_is_a_valid_spec_with_consecutive_ports(tmp_path: Path) -> None:
    ok("--dir", "deep/er/certs", "--nodes", "4", cwd=tmp_path)
    path = tmp_path / "deep" / "er" / "certs" / "cluster.json"
    data = json.loads(path.read_text())
    assert data == {
        "nodes": [{"id": n, "address": f"127.0.0.1:{20000 + n - 1}"} for n in range(1, 5)],
        "node_key_path": "reign_node.%d.key",
        "node_cert_path": "reign_node.%d.crt",
        "cluster_cert_path": "reign_ca.crt",
    }
    spec = ClusterSpec.load(path)
    assert [spec.node(n).address for n in range(1, 5)] == [
        ("127.0.0.1", p) for p in range(20000, 20004)
    ]
    for n in range(1, 5):
        cert, key, ca = spec.load_credentials(n)  # checks key, CA signature and identity
        assert node_id_from_certificate(cert) == n
        assert key == (path.parent / f"reign_node.{n}.key").read_bytes()
        assert ca == (path.parent / "reign_ca.crt").read_bytes()


def test_rerun_reuses_ca_and_nodes_and_adds_missing_ones(tmp_path: Path, initialized: Path) -> None:
    certs = initialized
    before = snapshot(certs)
    warning = (
        f"reign_init: warning: {Path('certs') / 'cluster.json'} has no entry for node(s) 3; "
        "add them or re-run with --force\n"
    )
    out = ok("--nodes", "3", "--days", "10", cwd=tmp_path, stderr=warning)
    assert out == [
        "Using existing signing certificate",
        "Using existing certificate for node 1",
        "Using existing certificate for node 2",
        "Constructed certificate for node 3",
        f"Using existing cluster spec {Path('certs') / 'cluster.json'}",
    ]
    after = snapshot(certs)
    for name, content in before.items():
        assert after[name] == content, name  # byte for byte, cluster.json included
    ca = after["reign_ca.crt"]
    assert check_node_credentials(after["reign_node.3.crt"], after["reign_node.3.key"], ca) == 3
    assert mode(certs / "reign_node.3.key") == 0o600


def test_force_regenerates_everything(tmp_path: Path, initialized: Path) -> None:
    certs = initialized
    before = snapshot(certs)
    out = ok("--force", "--nodes", "3", cwd=tmp_path)
    assert out[0] == "Signing certificate created"
    assert out[-1] == f"Wrote cluster spec {Path('certs') / 'cluster.json'}"
    after = snapshot(certs)
    for name in before:
        assert after[name] != before[name], name
    for n in (1, 2, 3):
        assert (
            check_node_credentials(
                after[f"reign_node.{n}.crt"], after[f"reign_node.{n}.key"], after["reign_ca.crt"]
            )
            == n
        )
    assert ClusterSpec.load(certs / "cluster.json").node_ids == (1, 2, 3)
    assert mode(certs / "reign_ca.key") == 0o600


def test_existing_cluster_json_is_kept_without_force(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "cluster.json").write_text("my own")
    result = run_in_process(cwd=tmp_path)
    assert result.returncode == 0
    assert (certs / "cluster.json").read_text() == "my own"
    assert "is not a valid cluster spec" in result.stderr  # warned, one line
    assert len(result.stderr.splitlines()) == 1


def test_organization_goes_into_the_certificates(tmp_path: Path) -> None:
    ok("--organization", "Acme Widgets", "--nodes", "1", cwd=tmp_path, process=False)
    for name in ("reign_ca.crt", "reign_node.1.crt"):
        cert = x509.load_pem_x509_certificate((tmp_path / "certs" / name).read_bytes())
        assert "O=Acme Widgets" in cert.subject.rfc4514_string()


def test_days_sets_the_lifetime(tmp_path: Path) -> None:
    ok("--days", "3", "--nodes", "1", cwd=tmp_path, process=False)
    for name in ("reign_ca.crt", "reign_node.1.crt"):
        cert = x509.load_pem_x509_certificate((tmp_path / "certs" / name).read_bytes())
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 3 * 86400 <= lifetime.total_seconds() <= 3 * 86400 + 600


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "reign_init"
    if not script.exists():
        script_path = shutil.which("reign_init")
        if script_path is None:
            pytest.skip("reign_init console script not installed in this environment")
        script = Path(script_path)
    result = subprocess.run(
        [str(script), "--nodes", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "certs" / "reign_node.1.key").exists()


def test_main_in_process_returns_status_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--help"]) == 0
    assert "--nodes" in capsys.readouterr().out
    assert main(["--nodes", "0"]) == 2
    assert capsys.readouterr().err.startswith("reign_init: error: argument --nodes")
    assert main(["--dir", str(tmp_path / "x"), "--nodes", "1"]) == 0
    assert (tmp_path / "x" / "reign_node.1.crt").exists()


# --------------------------------------------------------------------------- refusing to guess


@pytest.mark.parametrize(
    ("remove", "found", "missing"),
    [
        ("reign_ca.crt", "reign_ca.key", "reign_ca.crt"),
        ("reign_ca.key", "reign_ca.crt", "reign_ca.key"),
        ("reign_node.2.crt", "reign_node.2.key", "reign_node.2.crt"),
        ("reign_node.1.key", "reign_node.1.crt", "reign_node.1.key"),
    ],
)
def test_orphan_key_or_certificate_is_an_error(
    tmp_path: Path, initialized: Path, remove: str, found: str, missing: str
) -> None:
    certs = initialized
    (certs / remove).unlink()
    before = snapshot(certs)
    line = fails("--nodes", "3", cwd=tmp_path)
    assert f"found {Path('certs') / found} but not {Path('certs') / missing}" in line
    assert "--force" in line
    assert snapshot(certs) == before  # nothing written, not even node 3


def test_node_files_without_ca_are_an_error(tmp_path: Path, initialized: Path) -> None:
    certs = initialized
    (certs / "reign_ca.crt").unlink()
    (certs / "reign_ca.key").unlink()
    line = fails(cwd=tmp_path, process=False)
    assert "no signing certificate" in line
    assert not (certs / "reign_ca.crt").exists()


def test_node_from_another_ca_is_an_error(tmp_path: Path, pristine: Path) -> None:
    ok("--dir", "a", cwd=tmp_path, process=False)
    for suffix in ("crt", "key"):
        shutil.copy(pristine / f"reign_node.1.{suffix}", tmp_path / "a" / f"reign_node.1.{suffix}")
    line = fails("--dir", "a", cwd=tmp_path, process=False)
    assert "reign_node.1.crt" in line and "not issued by this cluster's CA" in line
    assert "use --force" in line
    # --force repairs it.
    ok("--dir", "a", "--force", cwd=tmp_path, process=False)
    a = tmp_path / "a"
    assert (
        check_node_credentials(
            (a / "reign_node.1.crt").read_bytes(),
            (a / "reign_node.1.key").read_bytes(),
            (a / "reign_ca.crt").read_bytes(),
        )
        == 1
    )


def test_swapped_node_files_are_an_error(tmp_path: Path, initialized: Path) -> None:
    certs = initialized
    for suffix in ("crt", "key"):
        one, two = certs / f"reign_node.1.{suffix}", certs / f"reign_node.2.{suffix}"
        data = one.read_bytes()
        one.write_bytes(two.read_bytes())
        two.write_bytes(data)
    assert "identifies node 2, not node 1" in fails(cwd=tmp_path, process=False)


def test_mismatched_keys_are_an_error(tmp_path: Path, initialized: Path) -> None:
    certs = initialized
    shutil.copy(certs / "reign_node.2.key", certs / "reign_node.1.key")
    assert "does not belong" in fails(cwd=tmp_path, process=False)
    shutil.copy(certs / "reign_node.2.key", certs / "reign_ca.key")
    line = fails(cwd=tmp_path, process=False)
    assert "reign_ca.crt" in line and "does not belong" in line


def test_garbage_ca_is_an_error(tmp_path: Path, initialized: Path) -> None:
    (initialized / "reign_ca.crt").write_text("garbage\n")
    assert "not an X.509 certificate" in fails(cwd=tmp_path, process=False)


# --------------------------------------------------------------------------- loose key permissions
# Only the mode bits count (CI runs as root, which could read any file): reign_init never reuses
# a key with a group/other bit set, and never chmods or rewrites it.


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o701], ids=lambda m: f"{m:04o}")
def test_ca_key_readable_by_others_is_refused_and_left_untouched(
    tmp_path: Path, initialized: Path, loose: int
) -> None:
    certs = initialized
    key = certs / "reign_ca.key"
    key.chmod(loose)
    before = snapshot(certs)
    # 0644, the case the issue reports, as a real process; the other modes in-process.
    line = fails("--nodes", "3", cwd=tmp_path, process=loose == 0o644)
    shown = Path("certs") / "reign_ca.key"
    assert line.startswith(f"reign_init: {shown}: private key is "), line
    assert f"by group/others (mode {loose:04o}); chmod 600 {shown} and run again" in line
    assert "make a new CA with --force" in line
    assert mode(key) == loose  # not loosened, not tightened: untouched
    assert snapshot(certs) == before  # nothing written, not even node 3


def test_node_key_readable_by_others_is_refused_too(tmp_path: Path, initialized: Path) -> None:
    # A node would refuse to start with it, so reusing it would only defer the failure.
    certs = initialized
    (certs / "reign_node.2.key").chmod(0o644)
    before = snapshot(certs)
    line = fails("--nodes", "3", cwd=tmp_path, process=False)
    shown = Path("certs") / "reign_node.2.key"
    assert f"reign_init: {shown}: private key is readable by group/others (mode 0644)" in line
    assert f"chmod 600 {shown} and run again" in line
    assert f"delete {shown} and {Path('certs') / 'reign_node.2.crt'}" in line
    assert mode(certs / "reign_node.2.key") == 0o644
    assert snapshot(certs) == before


def test_the_chmod_in_the_message_can_be_pasted_into_a_shell(tmp_path: Path) -> None:
    ok("--dir", "my certs", "--nodes", "1", cwd=tmp_path, process=False)
    (tmp_path / "my certs" / "reign_ca.key").chmod(0o644)
    line = fails("--dir", "my certs", "--nodes", "1", cwd=tmp_path, process=False)
    shown = Path("my certs") / "reign_ca.key"
    assert f"chmod 600 '{shown}' and run again" in line
    subprocess.run(["sh", "-c", line.split("; ")[1].split(" and run again")[0]], cwd=tmp_path, check=True)
    assert mode(tmp_path / shown) == 0o600
    ok("--dir", "my certs", "--nodes", "1", cwd=tmp_path, process=False)


def test_keys_owner_only_are_reused(tmp_path: Path, initialized: Path) -> None:
    certs = initialized
    (certs / "reign_ca.key").chmod(0o400)
    (certs / "reign_node.1.key").chmod(0o400)
    before = snapshot(certs)
    out = ok("--nodes", "1", cwd=tmp_path, process=False)
    assert out[:2] == ["Using existing signing certificate", "Using existing certificate for node 1"]
    assert snapshot(certs) == before
    assert mode(certs / "reign_ca.key") == 0o400


def test_force_replaces_a_loose_ca_key_with_a_new_private_one(
    tmp_path: Path, initialized: Path
) -> None:
    certs = initialized
    (certs / "reign_ca.key").chmod(0o644)
    old = (certs / "reign_ca.key").read_bytes()
    out = ok("--force", cwd=tmp_path, process=False)
    assert out[0] == "Signing certificate created"
    assert (certs / "reign_ca.key").read_bytes() != old
    assert mode(certs / "reign_ca.key") == 0o600


# --------------------------------------------------------------------------- bad input

BAD_ARGUMENTS = [
    (["--nodes", "0"], "argument --nodes"),
    (["--nodes", "300"], "argument --nodes"),
    (["--nodes", "two"], "argument --nodes"),
    (["--days", "0"], "argument --days"),
    (["--days", "-3"], "argument --days"),
    (["--bogus"], "unrecognized arguments"),
    # The cases above also run as real processes (see SUBPROCESS_CASES); these only in-process.
    (["--nodes", "256"], "argument --nodes"),
    (["--nodes", "-1"], "argument --nodes"),
    (["--nodes", "2.0"], "argument --nodes"),
    (["--nodes", " 2"], "argument --nodes"),
    (["--nodes", "\u0662"], "argument --nodes"),  # ARABIC-INDIC DIGIT TWO: int() would take it
    (["--nodes", "9" * 5000], "argument --nodes"),
    (["--nodes"], "argument --nodes"),
    (["--days", "1e3"], "argument --days"),
    (["--days", "99999999"], "argument --days"),
    (["--organization", ""], "argument --organization"),
    (["--organization", "x" * 65], "argument --organization"),
    (["--organization", "two\nlines"], "argument --organization"),
    (["--dir", ""], "argument --dir"),
    (["extra"], "unrecognized arguments"),
    (["--node", "3"], "unrecognized arguments"),  # no abbreviations
]
SUBPROCESS_CASES = range(6)
_IDS = [" ".join(a)[:30] for a, _ in BAD_ARGUMENTS]


@pytest.fixture(scope="module")
def bad_argument_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[int, tuple[Path, int, str, str]]:
    """The SUBPROCESS_CASES run at once, each its own process and folder (saves wall time)."""
    started = {}
    for index in SUBPROCESS_CASES:
        cwd = tmp_path_factory.mktemp(f"bad{index}")
        command = [sys.executable, "-m", "reign_init", *BAD_ARGUMENTS[index][0]]
        started[index] = (
            cwd,
            subprocess.Popen(
                command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
        )
    results = {}
    for index, (cwd, process) in started.items():
        out, err = process.communicate(timeout=TIMEOUT)
        results[index] = (cwd, process.returncode, out, err)
    return results


def _check_usage_error(cwd: Path, status: int, out: str, err: str, expected: str) -> None:
    assert status == 2, (out, err)
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("reign_init: error: ")
    assert expected in lines[0]
    assert list(cwd.iterdir()) == []  # nothing created


@pytest.mark.parametrize("index", SUBPROCESS_CASES, ids=[_IDS[i] for i in SUBPROCESS_CASES])
def test_bad_arguments_exit_2_with_one_line(
    bad_argument_runs: dict[int, tuple[Path, int, str, str]], index: int
) -> None:
    _check_usage_error(*bad_argument_runs[index], BAD_ARGUMENTS[index][1])


@pytest.mark.parametrize(("args", "expected"), BAD_ARGUMENTS, ids=_IDS)
def test_bad_arguments_in_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    status = main(args)
    captured = capsys.readouterr()
    _check_usage_error(tmp_path, status, captured.out, captured.err, expected)


def test_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    assert "is not a directory" in fails("--dir", "plain", cwd=tmp_path)
    assert "cannot create directory" in fails("--dir", "plain/sub", cwd=tmp_path)


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_unwritable_dir_is_an_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert "cannot write to directory" in fails("--dir", "locked", cwd=tmp_path)
        assert "cannot create directory" in fails("--dir", "locked/sub", cwd=tmp_path)
    finally:
        locked.chmod(0o700)


def test_unreadable_existing_file_is_an_error(tmp_path: Path, initialized: Path) -> None:
    certs = initialized
    (certs / "reign_node.1.key").unlink()
    (certs / "reign_node.1.key").mkdir()  # a folder where a key should be
    line = fails(cwd=tmp_path, process=False)
    assert "cannot read" in line and "reign_node.1.key" in line


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs, where nobody may create folders")
def test_unwritable_location_is_an_error_even_for_root(tmp_path: Path) -> None:
    # The chmod test above cannot run as root (CI); sysfs refuses mkdir to everyone.
    assert "cannot create directory" in fails("--dir", "/sys/reign-init-test", cwd=tmp_path)
