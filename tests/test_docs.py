"""The documentation cannot drift from the code: docs/settings.md is what the argument parsers
generate (``make docs-settings``), the README stays a page, and every relative link of the
README and docs/ reaches a file (and, with ``#anchor``, a heading of it). The examples of the
README and docs/ run against the real stack in tests/e2e/test_doc_examples.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from harness.processes import REPO

README_MAX_LINES = 200
DOCUMENTS = [REPO / "README.md", REPO / "deploy" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
VARIABLE = re.compile(r'"((?:INFERENCE|EDGE|OLLAMA|PROMETHEUS)_[A-Z0-9_]+)"')
# Not settings: the edge's note to itself that it made the metrics directory.
NOT_SETTINGS = {"EDGE_PRIVATE_METRICS_DIR"}


def test_the_settings_table_is_what_the_parsers_generate():
    generated = subprocess.run([sys.executable, "tools/settings_table.py"], capture_output=True, text=True,
                               check=True, timeout=60, cwd=REPO).stdout
    committed = (REPO / "docs" / "settings.md").read_text()
    assert committed == generated, "docs/settings.md is stale: run make docs-settings"


def test_every_variable_the_code_reads_is_in_the_settings_table():
    settings = (REPO / "docs" / "settings.md").read_text()
    named = set()
    for package in ("inference_service", "rest_edge"):
        for source in (REPO / package).rglob("*.py"):
            named |= set(VARIABLE.findall(source.read_text()))
    missing = sorted(named - NOT_SETTINGS - set(re.findall(r"`([A-Z][A-Z0-9_]+)`", settings)))
    assert not missing, f"read by the code, missing from docs/settings.md: {missing}"


def test_the_readme_is_a_page():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail into docs/"


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_its_target(document):
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{document.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text()), f"{document.name}: no heading #{anchor} in {linked.name}"
