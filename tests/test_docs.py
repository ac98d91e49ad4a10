"""Every code example in the documentation runs, so none can rot (the README's "A taste" once
crashed as written).

Which files: ``README.md``, ``docs/*.md`` and ``examples/*/README.md``.

The conventions (write documentation to them):

* Every fenced block tagged ``python`` is a **complete program**. The test writes it to a file in
  a fresh temporary directory and runs it there with this interpreter, under
  ``REIGN_CHECK_MESSAGES=1`` (so examples only send values that could cross nodes). It must exit
  with status 0 within :data:`CASE_TIMEOUT` seconds and print no traceback. Examples check
  their own results with ``assert``. Fragments that are not programs go in inline code, tables
  or blocks of another language (``text``, ``sh``, ``erlang``), which are not run.
* An HTML comment on the line right before the opening fence sets options for that block::

      <!-- doc-test: cluster=1,2 group=taste role=server -->

  - ``cluster=1,2``: before running, write ``certs/cluster.json`` with certificates for nodes 1
    and 2 on free loopback ports (:func:`reign.testing.make_cluster`) in the block's directory,
    as ``reign_init --dir certs`` would.
  - ``group=NAME``: the blocks of one file with the same group run at the same time, each as its
    own process, in one directory (they may talk to each other over the cluster). The cluster
    option of the group's first block applies to the group.
  - ``role=server``: in a group, a program that serves until it is stopped. It is started
    first; once the other programs of the group have exited, it must still be running, and is
    then stopped with SIGTERM.
  - ``path=examples/ch3``: put that folder of the repository on the program's ``PYTHONPATH``.

  Any other option is an error, so a typo cannot silently skip a check.
* Every fenced block tagged ``json`` is a cluster spec and must pass
  :meth:`reign.ClusterSpec.from_dict`.
* Links: a Markdown link to a file of the repository must point at a file that exists (and at a
  heading that exists, for ``#anchor``); nothing links outside the repository.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import reign
import reign.testing
from reign.testing import make_cluster

try:
    from .cluster_util import ROOT
except ImportError:  # tests/ is not a package: pytest's rootdir-relative import
    from cluster_util import ROOT  # type: ignore[no-redef]

#: Seconds one example (or one group of them) may take: an interpreter start, maybe TLS between
#: two or three of them, a few round trips. Only ever spent in full when the test is failing.
CASE_TIMEOUT = 60.0
#: Seconds a ``role=server`` program may take to end after SIGTERM.
STOP_TIMEOUT = 10.0

pytestmark = pytest.mark.timeout(CASE_TIMEOUT + 2 * STOP_TIMEOUT)

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
OPTIONS = {"cluster", "group", "role", "path"}

_FENCE = re.compile(r"^(`{3,})([A-Za-z0-9_+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*doc-test:(.*?)-->\s*$")


@dataclass
class Block:
    """One fenced code block of a documentation file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` with their ``doc-test`` options (ValueError for bad ones)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, lang = opening.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != fence:
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start + 1}: code block is never closed")
        options: dict[str, str] = {}
        marker = _MARKER.match(lines[start - 1]) if start else None
        if marker is not None:
            for item in marker.group(1).split():
                key, sep, value = item.partition("=")
                if not sep or key not in OPTIONS:
                    raise ValueError(f"{path}:{start}: unknown doc-test option {item!r} (known: {sorted(OPTIONS)})")
                options[key] = value
        found.append(Block(path, start + 1, lang, "\n".join(body) + "\n", options))
        i += 1
    return found


def python_cases() -> list[list[Block]]:
    """The python blocks of every doc file, one list per test case (a group is one case)."""
    cases: list[list[Block]] = []
    for path in DOC_FILES:
        groups: dict[str, list[Block]] = {}
        for block in parse_blocks(path):
            if block.lang != "python":
                continue
            group = block.options.get("group")
            if group is None:
                cases.append([block])
            elif group in groups:
                groups[group].append(block)
            else:
                groups[group] = [block]
                cases.append(groups[group])
    return cases


CASES = python_cases()


def _env(block: Block) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", REIGN_CHECK_MESSAGES="1")
    paths = [str(ROOT)]
    if "path" in block.options:
        extra = ROOT / block.options["path"]
        assert extra.is_dir(), f"{block.where}: path={block.options['path']} is not a folder of the repository"
        paths.insert(0, str(extra))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _start(block: Block, folder: Path) -> subprocess.Popen[str]:
    script = folder / f"example_{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, script.name], cwd=folder, env=_env(block), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _report(block: Block, proc: subprocess.Popen[str], out: str, err: str) -> str:
    return f"{block.where} exited with {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


@pytest.mark.parametrize("case", CASES, ids=[case[0].where for case in CASES])
def test_python_example_runs(case: list[Block], tmp_path: Path) -> None:
    cluster = case[0].options.get("cluster")
    if cluster:
        (tmp_path / "certs").mkdir()
        make_cluster(tmp_path / "certs", [int(n) for n in cluster.split(",")])
    for block in case:
        role = block.options.get("role")
        assert role in (None, "server"), f"{block.where}: unknown role {role!r}"
        assert role is None or len(case) > 1, f"{block.where}: role=server needs a group with a client"
    servers = [(b, _start(b, tmp_path)) for b in case if b.options.get("role") == "server"]
    clients = [(b, _start(b, tmp_path)) for b in case if b.options.get("role") is None]
    failures: list[str] = []
    deadline = time.monotonic() + CASE_TIMEOUT
    try:
        for block, proc in clients:
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                failures.append(f"{block.where} did not finish within {CASE_TIMEOUT:g} s\n{out}\n{err}")
                continue
            if proc.returncode != 0 or "Traceback" in err:
                failures.append(_report(block, proc, out, err))
        for block, proc in servers:
            if proc.poll() is not None:
                out, err = proc.communicate()
                failures.append("a server must run until it is stopped: " + _report(block, proc, out, err))
                continue
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=STOP_TIMEOUT)
            if "Traceback" in err:
                failures.append(_report(block, proc, out, err))
    finally:
        for _, proc in servers + clients:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert not failures, "\n\n".join(failures)


def test_every_doc_file_has_runnable_examples() -> None:
    """Guards the parser: a change that found no blocks would make every example "pass"."""
    counted = dict.fromkeys(DOC_FILES, 0)
    for case in CASES:
        for block in case:
            counted[block.path] += 1
    for name in ("README.md", "docs/api.md", "docs/porting.md"):
        assert counted.get(ROOT / name, 0) >= 2, f"{name}: expected runnable python examples"


@pytest.mark.parametrize("module", [reign, reign.testing], ids=["reign", "reign.testing"])
def test_the_api_reference_documents_every_public_name(module: object) -> None:
    """``docs/api.md`` names everything ``import reign`` (and ``reign.testing``) exports."""
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [
        name for name in module.__all__  # type: ignore[attr-defined]
        if not re.search(rf"`(?:await )?(?:reign\.)?{re.escape(name)}\b", text)
    ]
    assert not missing, f"docs/api.md does not document {missing}"


def test_json_blocks_are_valid_cluster_specs() -> None:
    specs = [b for path in DOC_FILES for b in parse_blocks(path) if b.lang == "json"]
    assert specs, "the README shows a cluster spec"
    for block in specs:
        reign.ClusterSpec.from_dict(json.loads(block.code))


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_BARE_URL = re.compile(r"\bhttps?://")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``."""
    anchors: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", [*DOC_FILES, ROOT / "CHANGELOG.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_inside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not _BARE_URL.search(text), f"{path.name} links to the web; name the thing in text instead"
    for target in _LINK.findall(text):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.is_relative_to(ROOT), f"{path.name}: {target} points outside the repository"
        assert resolved.exists(), f"{path.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{path.name}: no heading for #{anchor} in {resolved.name}"
