"""The embedded engine's lease: an exclusive ``flock`` on ``{name}.lock`` in the state directory.

The kernel drops the lock when its holder dies however it dies (``kill -9`` included), so a
lease is never left behind; a waiting taker gets it within its poll interval. ``serve`` holds
``serve``, the pipeline process (or a backfill without a daemon) holds ``pipeline``.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import IO, Final

from otelbridge.store.files import StoreError, ensure_state_dir, open_private

POLL_S: Final = 0.05


class FileLease:
    def __init__(self, state_dir: Path, name: str) -> None:
        self.path = state_dir / f"{name}.lock"
        self._state_dir = state_dir
        self._handle: IO[str] | None = None

    def acquire(self, wait_s: float = 0.0) -> bool:
        if self._handle is not None:
            return True  # held already: taking it twice must not stack
        ensure_state_dir(self._state_dir)
        try:
            handle = open_private(self.path)  # 0600, never through a link
        except OSError as exc:
            raise StoreError(f"cannot use {self.path.absolute()}: {exc.strerror}") from None
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    return False
                time.sleep(POLL_S)
                continue
            self._handle = handle
            return True

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def renew(self) -> bool:
        """Nothing to renew: the kernel holds the lock until this process dies."""
        return self._handle is not None

    @property
    def held(self) -> bool:
        return self._handle is not None
