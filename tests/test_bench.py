"""The benchmark scripts start as docs/benchmarks.md runs them: ``python bench/<script>.py``,
from any directory, with nothing on ``PYTHONPATH`` (each finds the checkout's otelbridge and
tests.support by itself). Their measurements are not run here: they are benchmarks, not tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")


def test_every_script_is_covered() -> None:
    assert len(SCRIPTS) >= 8  # a glob that finds nothing would pass every case below


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_starts_from_another_directory(script: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
