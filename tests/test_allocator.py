"""glibc malloc tuning: applied through the real libc, and left alone when the user set it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from otelbridge.allocator import YOUNG_COLLECTION_ALLOCATIONS, fix_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_fixed_mmap_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert fix_mmap_threshold() is True


def test_an_explicit_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False


FREEZE_SCRIPT = """
import gc, json, weakref

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

before = cycle()  # garbage of the start: collected, not frozen
import otelbridge.daemon
from otelbridge.allocator import tune_garbage_collection

tune_garbage_collection()
frozen = gc.get_freeze_count()
after = cycle()  # garbage made later: still collected
gc.collect()
young = gc.get_threshold()[0]
print(json.dumps({"frozen": frozen, "before": before() is None, "after": after() is None, "young": young}))
"""


def test_startup_objects_are_frozen_and_later_garbage_is_still_collected() -> None:
    """In a fresh interpreter (a frozen object is never collected: not in the test runner):
    the webhook process's modules are out of the collector's scans, and cycles made before or
    after are freed."""
    out = subprocess.run([sys.executable, "-c", FREEZE_SCRIPT], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["frozen"] > 20_000  # otelbridge.daemon's modules, classes and schemas
    assert result["before"] and result["after"]
    assert result["young"] == YOUNG_COLLECTION_ALLOCATIONS > 700  # CPython's default
