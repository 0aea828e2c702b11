"""The README and docs/ as an operator reads them (issue 21).

* every shell block is run by a test (here, or tests/test_readme.py against the quick start's
  daemon) or carries ``<!-- not run: reason -->`` directly above it;
* every link inside the repository (relative paths and ``#anchors``) resolves;
* the reference pages match the code: docs/settings.md is what ``python3 -m
  otelbridge.settings_doc`` writes, docs/alerts.md has a heading per alert, docs/backends.md a
  section per preset, docs/metrics.md every metric name (tests/test_readme.py checks it against a
  real ``/metrics``), docs/index.md and the README every page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import yaml

from otelbridge import settings_doc
from otelbridge.delivery.environment import CONFIG_OTEL_VARS
from otelbridge.link import trace_id_hex
from otelbridge.mapping import conventions
from tests.support.serve_process import clean_env

ROOT: Final = Path(__file__).resolve().parents[1]
DOCS: Final = ROOT / "docs"
README: Final = ROOT / "README.md"
README_MAX_BYTES: Final = 12 * 1024
SHELL_LANGS: Final = frozenset({"sh", "bash", "shell", "console"})
NOT_RUN: Final = re.compile(r"<!-- not run: \S.* -->")
RULE_FILES: Final = (
    ROOT / "deploy" / "prometheus" / "otelbridge.rules.yaml",
    ROOT / "deploy" / "prometheus" / "otelbridge.slo.rules.yaml",
)
RUNBOOK_BASE: Final = "https://github.com/otelbridge/otelbridge/blob/main/docs/alerts.md#"

#: the shell blocks tests run, by file and first line -> the test that runs it
RUN: Final = {
    (
        "README.md",
        "OTELBRIDGE_EXPORTER=console OTELBRIDGE_WEBHOOK_SECRET=",
    ): "test_readme.py (the quick start)",
    (
        "docs/operate.md",
        "curl -sf http://127.0.0.1:9464/readyz; echo",
    ): "test_readme.py (against the quick start)",
    ("docs/operate.md", "umask 077\ncp -a"): "test_readme.py (the quick start's state, stopped)",
    ("docs/operate.md", "umask 077\nfor db in"): "test_readme.py (the quick start's state, running)",
    ("docs/operate.md", 'rm -f "$STATE"/*.db'): "test_readme.py (the quick start's state, restored)",
    ("docs/commands.md", "otelbridge replay --exporter console"): "test_replay_example_block",
    ("docs/conventions.md", "printf '%s' \"cartesia.call.v1:$CALL_ID\""): "test_trace_id_block",
    ("docs/settings.md", "python3 -m otelbridge.settings_doc > docs/settings.md"): "test_settings_page_block",
}


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    lang: str
    above: str  # the line directly above the fence
    code: str


def pages() -> list[Path]:
    """The README and every page under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        match = re.match(r"^(`{3,})(\S*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        fence, lang, start = match.group(1), match.group(2), i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        above = lines[start - 1] if start else ""
        found.append(Block(rel(path), start + 1, lang, above, "\n".join(body) + "\n"))
        i += 1
    return found


def shell_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks(p) if b.lang in SHELL_LANGS]


def block(path: str, first: str) -> str:
    """The shell block of ``path`` whose code starts with ``first`` (exactly one)."""
    matches = [b.code for b in blocks(ROOT / path) if b.lang in SHELL_LANGS and b.code.startswith(first)]
    assert len(matches) == 1, f"{path}: {len(matches)} shell blocks start with {first!r}"
    return matches[0]


def run_block(code: str, cwd: Path, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(extra or {})}
    )
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- shell blocks -------------------------------------------------------------------------


def test_every_shell_block_is_run_or_says_why_not() -> None:
    unaccounted = []
    for b in shell_blocks():
        runs = [key for key in RUN if key[0] == b.path and b.code.startswith(key[1])]
        if runs:
            assert not NOT_RUN.fullmatch(b.above.strip()), f"{b.path}:{b.line} is run, yet marked not run"
        elif not NOT_RUN.fullmatch(b.above.strip()):
            unaccounted.append(f"{b.path}:{b.line}")
    assert not unaccounted, (
        "shell blocks neither run by a test (RUN in tests/test_docs.py) nor marked "
        f"'<!-- not run: reason -->' directly above: {unaccounted}"
    )


@pytest.mark.parametrize(("path", "first"), sorted(RUN))
def test_every_block_a_test_runs_exists(path: str, first: str) -> None:
    block(path, first)


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    code = block("README.md", "python3 -m pip install")
    assert code == "python3 -m pip install -e '.[test]'\npython3 -m pytest\n"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for line in code.splitlines():
        assert line in ci, f".ci/run does not run the README's {line!r}"


def test_replay_example_block(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    result = run_block(block("docs/commands.md", "otelbridge replay --exporter console"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "otelbridge replay: 12 calls" in result.stderr
    assert "call ac_sid_hHWWwd2fnqLrZY8BP3xzfs  trace 842dfb6cb720e8760b641ab2f2ebfdfb" in result.stdout


def test_trace_id_block(tmp_path: Path) -> None:
    code = block("docs/conventions.md", "printf '%s' \"cartesia.call.v1:$CALL_ID\"")
    for call_id in ("ac_sid_gqkgRWUz2u64qFUjA1mZyr", "ac_ünïcødé"):
        result = run_block(code, tmp_path, {"CALL_ID": call_id, "LC_ALL": "C.UTF-8"})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == trace_id_hex(call_id)


def test_settings_page_block(tmp_path: Path) -> None:
    """The page's own command, run: what it writes is the page (else the page is stale)."""
    (tmp_path / "docs").mkdir()
    result = run_block(block("docs/settings.md", "python3 -m otelbridge.settings_doc"), tmp_path)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "docs" / "settings.md").read_text(encoding="utf-8")
    assert written == (DOCS / "settings.md").read_text(encoding="utf-8"), (
        "docs/settings.md is stale: run python3 -m otelbridge.settings_doc > docs/settings.md"
    )


# --- links --------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(`{3,}).*?^\1\s*$", "", text, flags=re.S | re.M)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", text, re.M):
        base, n = slug(heading), 0
        name = base
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(`{3,}).*?^\1\s*$", "", text, flags=re.S | re.M)  # not inside code blocks
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


LINKED: Final = [*pages(), ROOT / "deploy" / "helm" / "otelbridge" / "README.md"]


@pytest.mark.parametrize("path", LINKED, ids=rel)
def test_links_inside_the_repository_resolve(path: Path) -> None:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:: outside the repository
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor})")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{rel(path)}: broken links: {broken}"


def test_slug_as_github_makes_it() -> None:
    assert slug("Kubernetes: the Helm chart (`deploy/helm/otelbridge`)") == (
        "kubernetes-the-helm-chart-deployhelmotelbridge"
    )
    assert slug("Where it sends: the `OTEL_*` variables") == "where-it-sends-the-otel_-variables"
    assert slug("5.3 Series bounds (since 3.1.0)") == "53-series-bounds-since-310"


# --- the pages against the code -----------------------------------------------------------


def test_readme_is_a_front_door() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move reference to docs/"


def test_every_page_is_on_the_map() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        if page.name == "index.md":
            continue
        assert f"]({page.name})" in index, f"docs/index.md does not list {page.name}"
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_settings_page_is_current() -> None:
    assert (DOCS / "settings.md").read_text(encoding="utf-8") == settings_doc.settings_page(), (
        "docs/settings.md is stale: run python3 -m otelbridge.settings_doc > docs/settings.md"
    )
    assert settings_doc.main(["--check", str(DOCS / "settings.md")]) == 0


def test_settings_notes_name_real_settings() -> None:
    from otelbridge.settings import Settings

    assert set(settings_doc.NOTES) <= set(Settings.model_fields)


def test_every_otel_variable_read_is_on_the_settings_page() -> None:
    page = (DOCS / "settings.md").read_text(encoding="utf-8")
    for name in sorted(CONFIG_OTEL_VARS):
        base = name
        if name.startswith("OTEL_EXPORTER_OTLP_") and not name.endswith("TEMPORALITY_PREFERENCE"):
            base = name.replace("_TRACES_", "_").replace("_METRICS_", "_")  # "(and variants)"
        assert f"`{base}`" in page, f"{name} is read but docs/settings.md does not name it"


def alerts() -> dict[str, dict[str, str]]:
    """Every alert of the rule files: name -> annotations."""
    found: dict[str, dict[str, str]] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found.setdefault(rule["alert"], rule.get("annotations", {}))
    return found


def test_every_alert_has_a_runbook_heading() -> None:
    page = DOCS / "alerts.md"
    headings = re.findall(r"^## (\S+)$", page.read_text(encoding="utf-8"), re.M)
    names = alerts()
    assert len(names) >= 20
    missing = sorted(set(names) - set(headings))
    assert not missing, f"alerts without a '## <AlertName>' runbook in docs/alerts.md: {missing}"
    have = anchors(page)
    for name, annotation in names.items():
        assert name.lower() in have
        url = annotation.get("runbook_url")
        if url is not None:
            assert url == RUNBOOK_BASE + name.lower(), f"{name}: runbook_url {url}"


def test_every_preset_has_a_section_in_backends() -> None:
    headings = re.findall(r"^## (.+)$", (DOCS / "backends.md").read_text(encoding="utf-8"), re.M)
    presets = sorted(p.name for p in (ROOT / "config").iterdir() if p.suffix in {".toml", ".yaml"})
    assert len(presets) >= 8
    for name in presets:
        assert any(f"`{name}`" in heading for heading in headings), f"docs/backends.md: no section for {name}"


def test_phoenix_recipe_covers_what_users_trip_on() -> None:
    page = (DOCS / "backends.md").read_text(encoding="utf-8")
    for needle in (
        "openinference.project.name",
        "OTEL_METRICS_EXPORTER=none",
        "Sending the same calls again",
        "Last 7 Days",
    ):
        assert needle in page, needle


def metric_names() -> set[str]:
    skip = ("SELF_SCOPE", "METRIC_ATTR_", "SELF_ATTR_", "METRIC_LOG_METRIC_PREFIX")
    return {
        value
        for name, value in vars(conventions).items()
        if name.startswith(("METRIC_", "SELF_")) and isinstance(value, str) and not name.startswith(skip)
    }


def test_every_metric_name_is_on_the_metrics_page() -> None:
    page = (DOCS / "metrics.md").read_text(encoding="utf-8")
    names = metric_names()
    assert {"cartesia.tts.ttfb", "otelbridge.webhooks", "cartesia.evaluations"} <= names
    missing = sorted(name for name in names if f"| `{name}`" not in page)
    assert not missing, f"metrics absent from docs/metrics.md: {missing}"


def test_operate_states_the_schema_refusal() -> None:
    from otelbridge.store import sqlite

    page = (DOCS / "operate.md").read_text(encoding="utf-8")
    assert f"(schema {sqlite.SCHEMA_VERSION + 1} > {sqlite.SCHEMA_VERSION})" in page
    source = (ROOT / "otelbridge" / "store" / "sqlite.py").read_text(encoding="utf-8")
    assert "was written by a newer otelbridge" in source and "was written by a newer otelbridge" in page


def test_architecture_names_the_modules_of_the_flow() -> None:
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert "```mermaid" in page
    for module in (
        "ingest/receiver.py",
        "ingest/inbox.py",
        "ingest/processor.py",
        "delivery/spool.py",
        "delivery/sender.py",
    ):
        assert (ROOT / "otelbridge" / module).is_file()
        assert f"otelbridge/{module}" in page
