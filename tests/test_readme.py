"""The README's console quick start, run as written: the shell block itself, with bash and curl,
against a real ``otelbridge serve`` on the README's own ports. docs/operate.md's blocks run
against the same daemon and its state: verifying end to end, the online backup while it runs,
stop-and-copy and restore once it stopped; docs/metrics.md is checked against its ``/metrics``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.serve_process import clean_env
from tests.test_docs import block

ROOT = Path(__file__).resolve().parents[1]
CALL = "ac_sid_hHWWwd2fnqLrZY8BP3xzfs"
ADMIN = "http://127.0.0.1:9464"


def quick_start_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text.split("Without a backend at hand", 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match is not None
    return match.group(1)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return clean_env(
        {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(extra or {})}
    )


def _bash(code: str, cwd: Path, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        check=False,
        cwd=cwd,
        env=_env(extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def _accepted(metrics: str) -> float:
    """Webhooks accepted, summed over the event types."""
    found = re.findall(r'^otelbridge_webhooks_total\{.*outcome="accepted".*\} (\S+)$', metrics, re.M)
    return sum(float(value) for value in found)


@dataclass
class QuickStart:
    tmp: Path
    stdout: str
    stderr: str
    verify: subprocess.CompletedProcess[str]
    metrics: str
    online_backup: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> QuickStart:
    if shutil.which("curl") is None:
        pytest.skip("the quick start uses curl")
    tmp_path = tmp_path_factory.mktemp("quick-start")
    block_code = quick_start_block()
    assert "readyz" in block_code and CALL in block_code
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    state, online = tmp_path / "otelbridge-state", tmp_path / "online-backup"
    online.mkdir()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        bash = subprocess.Popen(
            ["bash", "-c", block_code],
            cwd=tmp_path,
            env=_env(),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            assert bash.wait(timeout=60) == 0, err.read_text()
            deadline = time.monotonic() + 20
            while f"call {CALL}  trace " not in out.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            # docs/operate.md, against the running daemon, once /metrics counts every delivery
            deadline = time.monotonic() + 20
            while _accepted(_get(f"{ADMIN}/metrics")) < 10 and time.monotonic() < deadline:
                time.sleep(0.2)
            verify = _bash(block("docs/operate.md", "curl -sf http://127.0.0.1:9464/readyz; echo"), tmp_path)
            metrics = _get(f"{ADMIN}/metrics")
            online_backup = _bash(
                block("docs/operate.md", "umask 077\nfor db in"),
                tmp_path,
                {"STATE": str(state), "BACKUP": str(online)},
            )
        finally:
            os.killpg(bash.pid, signal.SIGINT)  # Ctrl-C, as the README says
            deadline = time.monotonic() + 30
            while not _gone(bash.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _gone(bash.pid):
                os.killpg(bash.pid, signal.SIGKILL)
    return QuickStart(tmp_path, out.read_text(), err.read_text(), verify, metrics, online_backup)


def test_console_quick_start_prints_the_calls_tree(quick_start: QuickStart) -> None:
    text = quick_start.stdout
    lines = text.splitlines()
    # every delivery acknowledged, none answered empty (the tree may print between two answers)
    assert text.count('{"status":"accepted"}') == 10
    head = next(line for line in lines if f"call {CALL}  trace " in line)
    assert "agent support-bot-1  completed" in head
    assert sum(line.startswith(("├─ ", "└─ ")) for line in lines) == 7  # the call's seven turns
    assert any("execute_tool" in line for line in lines)
    assert "Traceback" not in quick_start.stderr


def test_operate_verify_block_against_the_quick_start(quick_start: QuickStart) -> None:
    result = quick_start.verify
    assert result.returncode == 0, result.stderr
    assert '"status":"ready"' in result.stdout
    assert _accepted(result.stdout) == 10
    assert re.search(r"^otelbridge_spans_total\{.*\} [1-9]", result.stdout, re.M)
    assert result.stdout.rstrip().endswith("842dfb6cb720e8760b641ab2f2ebfdfb")  # the tree's trace id


def test_metrics_page_lists_what_metrics_serves(quick_start: QuickStart) -> None:
    page = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = {
        m.group(1): line
        for line in page.splitlines()
        if (m := re.match(r"\| `[^`]+`[^|]* \| `([^`]+)`", line))
    }
    families: dict[str, set[str]] = {}
    for line in quick_start.metrics.splitlines():
        if line.startswith("# TYPE "):
            families.setdefault(line.split()[2], set())
        elif line and not line.startswith("#"):
            name, _, pairs = line.partition("{")
            family = re.sub(r"_(bucket|sum|count)$", "", name.split()[0])
            families.setdefault(family, set()).update(re.findall(r'(\w+)="', pairs))
    families.pop("target_info")
    assert "cartesia_tts_ttfb_seconds" in families and "otelbridge_webhooks_total" in families
    for family, labels in sorted(families.items()):
        assert family in rows, f"/metrics serves {family}, docs/metrics.md has no row for it"
        row = rows[family].replace(".", "_")
        for label in labels - {"le", "otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}:
            assert f"`{label}`" in row, f"docs/metrics.md: {family} lacks its label {label}"


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_operate_backup_and_restore_blocks(quick_start: QuickStart) -> None:
    tmp = quick_start.tmp
    state, online, copy = tmp / "otelbridge-state", tmp / "online-backup", tmp / "copy-backup"
    assert quick_start.online_backup.returncode == 0, quick_start.online_backup.stderr
    for db in ("inbox.db", "state.db", "acks.db"):
        assert _integrity(online / db) == "ok"
        assert (online / db).stat().st_mode & 0o077 == 0  # as private as the state
    # stop and copy: the daemon has stopped
    copy.mkdir()
    result = _bash(
        block("docs/operate.md", "umask 077\ncp -a"), tmp, {"STATE": str(state), "BACKUP": str(copy)}
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in state.iterdir()} == {p.name for p in copy.iterdir()}
    # restore the online copy into the state directory; it opens as a state again
    result = _bash(
        block("docs/operate.md", 'rm -f "$STATE"/*.db'), tmp, {"STATE": str(state), "BACKUP": str(online)}
    )
    assert result.returncode == 0, result.stderr
    assert not list(state.glob("*.db-wal"))
    conn = sqlite3.connect(state / "state.db")
    try:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is not None
    finally:
        conn.close()
