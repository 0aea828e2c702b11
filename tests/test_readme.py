"""The README's console quick start, run as written: the shell block itself, with bash and curl,
against a real ``otelbridge serve`` on the README's own ports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.serve_process import clean_env

ROOT = Path(__file__).resolve().parents[1]
CALL = "ac_sid_hHWWwd2fnqLrZY8BP3xzfs"


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


@pytest.mark.skipif(shutil.which("curl") is None, reason="the quick start uses curl")
def test_console_quick_start_prints_the_calls_tree(tmp_path: Path) -> None:
    block = quick_start_block()
    assert "readyz" in block and CALL in block
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = clean_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        bash = subprocess.Popen(
            ["bash", "-c", block], cwd=tmp_path, env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            assert bash.wait(timeout=60) == 0, err.read_text()
            deadline = time.monotonic() + 20
            while f"call {CALL}  trace " not in out.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            os.killpg(bash.pid, signal.SIGINT)  # Ctrl-C, as the README says
            deadline = time.monotonic() + 30
            while not _gone(bash.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _gone(bash.pid):
                os.killpg(bash.pid, signal.SIGKILL)
    text = out.read_text()
    lines = text.splitlines()
    # every delivery acknowledged, none answered empty (the tree may print between two answers)
    assert text.count('{"status":"accepted"}') == 10
    head = next(line for line in lines if f"call {CALL}  trace " in line)
    assert "agent support-bot-1  completed" in head
    assert sum(line.startswith(("├─ ", "└─ ")) for line in lines) == 7  # the call's seven turns
    assert any("execute_tool" in line for line in lines)
    assert "Traceback" not in err.read_text()
