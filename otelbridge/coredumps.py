"""No core file of an otelbridge process: it holds the webhook secrets, the API key, the
database password and the OTLP header values in memory."""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys
from typing import Final

#: prctl(2) option: whether the process may be dumped (and ptrace-attached by its user)
PR_SET_DUMPABLE: Final = 4


def disable_core_dumps() -> None:
    """``RLIMIT_CORE`` 0 (inherited across fork and exec) and, on Linux, ``PR_SET_DUMPABLE`` 0
    (which also keeps other processes of the same user from reading this one's memory; exec
    resets it, so each process calls this itself)."""
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
