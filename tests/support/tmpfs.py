"""A real tmpfs for the full-disk tests: a small filesystem of its own, mounted on a directory
of the test and unmounted at teardown, that a file (:func:`fill`) or webhooks can fill.

Mounting needs root; CI runs the suite as root. Elsewhere the tests that need one are skipped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge.store import free_bytes

FILLER = "filler.bin"


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """``path`` (created) with a tmpfs of ``size_bytes`` mounted on it for the block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    try:
        yield path
    finally:
        # lazy: a daemon the test killed may hold a file for a moment longer
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=10)


def fill(volume: Path, leave_bytes: int) -> Path:
    """Write a file on ``volume`` until no more than ``leave_bytes`` are free (0: full); the
    file, to delete when space is to come back."""
    filler = volume / FILLER
    chunk = b"\0" * (1024 * 1024)
    with filler.open("ab") as f:
        while (room := free_bytes(volume) - leave_bytes) > 0:
            try:
                f.write(chunk[: min(len(chunk), room)])
                f.flush()
            except OSError:  # ENOSPC: as full as it gets
                break
    return filler
