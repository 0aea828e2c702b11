"""The repository stands alone: nothing in it reads outside the checkout (a clone with
nothing beside it must pass its own tests; .ci/run proves it by running from such a clone)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\.\./shared|[\"']shared[\"']|parents\[[3-9]\]")


def test_no_file_reaches_outside_the_checkout() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".sh", ".toml", ".yaml", ".yml", ".json") and "/.ci/" not in f"/{name}":
            continue
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) and path != Path(__file__):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []


def test_the_sample_calls_are_in_the_repository() -> None:
    from tests.support.samples import LIST_CALLS, WEBHOOKS, sample_calls, webhook_events

    assert all(page.is_relative_to(ROOT) and page.is_file() for page in (*LIST_CALLS, WEBHOOKS))
    assert len(sample_calls()) == 12 and len(webhook_events()) == 166
