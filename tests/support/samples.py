"""The sample calls every test reads: ``examples/`` of this repository, nothing outside it.

Two List Calls pages (one per agent, ``expand=transcript``, newest first) and the webhook
stream those calls cause (examples/README.md says what they cover).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

SAMPLES: Final = Path(__file__).resolve().parents[2] / "examples"
LIST_CALLS: Final = (SAMPLES / "list-calls-agent0.json", SAMPLES / "list-calls-agent1.json")
WEBHOOKS: Final = SAMPLES / "webhooks.jsonl"


def webhook_events(path: Path = WEBHOOKS) -> list[dict[str, Any]]:
    """The webhook stream's deliveries, parsed, in their order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_calls(pages: tuple[Path, ...] = LIST_CALLS) -> list[dict[str, Any]]:
    """The calls of the List Calls pages, agent 0's then agent 1's."""
    calls: list[dict[str, Any]] = []
    for page in pages:
        calls += json.loads(page.read_text(encoding="utf-8"))["data"]
    return calls
