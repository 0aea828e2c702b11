"""Webhook events straight into a real inbox.db, as the webhook process stores them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.store import InboxStore, NewRow


def store_events(inbox: InboxStore, events: Iterable[dict[str, Any]]) -> None:
    rows: list[NewRow] = []
    for event in events:
        parsed = parse_webhook_event(event)
        assert parsed.resolved_call_id is not None
        rows.append((time.time_ns(), parsed.type, parsed.resolved_call_id, json.dumps(event).encode()))
    inbox.append(rows)
