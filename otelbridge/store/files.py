"""The state directory on disk: private permissions, free space (used by the SQLite engine
and by everything that keeps files in ``OTELBRIDGE_STATE_DIR``)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from contextlib import suppress
from pathlib import Path
from typing import IO, Final

log = logging.getLogger("otelbridge.store")


class StoreError(Exception):
    """The state directory or a database in it cannot be used."""


class DatabaseUnreachableError(StoreError):
    """No connection to the database could be made (down, unreachable, refused): worth trying
    again, unlike a refused login or a missing privilege."""


#: The state holds webhook bodies: transcripts and unmasked phone numbers. Its directory is
#: 0700 and its files 0600, whatever the umask.
PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600
#: every file otelbridge keeps in the state directory (SQLite adds -wal, -shm, -journal)
STATE_FILES: Final = ("inbox.db", "state.db", "acks.db", "serve.lock", "pipeline.lock")
SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state directory (and its parents) 0700 and check that it and its files are
    private; a StoreError naming the absolute path, the reason and the fix when that cannot be
    done, when the directory is group- or world-writable, or when a state file is a symbolic
    link. See :func:`_check_private_dir` for what is accepted and tightened."""
    try:
        existed = state_dir.is_dir()
        state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        if not existed:
            os.chmod(state_dir, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
        _check_private_dir(state_dir)
        for name in STATE_FILES:
            for suffix in SQLITE_COMPANIONS if name.endswith(".db") else ():
                _check_private_file(state_dir / f"{name}{suffix}")
            _check_private_file(state_dir / name)
    except OSError as exc:
        where = state_dir.absolute()
        shown = repr(str(state_dir)) + ("" if str(where) == str(state_dir) else f" ({where})")
        raise StoreError(
            f"cannot use OTELBRIDGE_STATE_DIR={shown}: {exc.strerror or exc}. Fix: make {where} a "
            f"directory writable by this user (uid {os.getuid()}), or point OTELBRIDGE_STATE_DIR at one "
            "(a persistent volume in containers)"
        ) from None


def _check_private_dir(state_dir: Path) -> None:
    """Refuse a directory others can write into (they could plant links or swap the files);
    tighten one of ours that others can only read (0755 from older versions: refusing it would
    stop every upgrade, and chmod loses nothing).

    One shared directory is accepted as it is: a Kubernetes volume under ``fsGroup`` (the
    chart's 10001), which the kubelet makes group-writable with the setgid bit and owns by root
    (``drwxrwsr-x root:10001``). Its group is this process's own group, so no other user can
    write into it; and it is left unchanged, since changing it would make the kubelet's
    ``fsGroupChangePolicy: OnRootMismatch`` walk the volume again at every start."""
    st = os.stat(state_dir)  # a symlink to the directory is the operator's choice of path
    mode = stat.S_IMODE(st.st_mode)
    euid = os.geteuid()
    where = state_dir.absolute()
    fsgroup = bool(mode & stat.S_ISGID) and st.st_gid == os.getegid() and st.st_uid in (euid, 0)
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and not fsgroup):
        who = "world-writable" if mode & stat.S_IWOTH else f"writable by group {st.st_gid}"
        raise StoreError(
            f"refusing OTELBRIDGE_STATE_DIR {where}: it is {who} (mode {mode:04o}, owner uid {st.st_uid}), "
            "so other users could read or replace the stored webhooks (transcripts, phone numbers). "
            f"Fix: chmod 0700 {where}, or point OTELBRIDGE_STATE_DIR at a subdirectory, which otelbridge "
            "creates 0700 (a volume shared through a group is accepted when the group is this process's "
            f"own, gid {os.getegid()}, and the directory has the setgid bit, as fsGroup makes it)"
        )
    if st.st_uid not in (euid, 0):
        raise StoreError(
            f"refusing OTELBRIDGE_STATE_DIR {where}: it belongs to uid {st.st_uid}, not to this user "
            f"(uid {euid}), and its owner can change or replace everything in it. Fix: chown {euid} {where}, "
            "or point OTELBRIDGE_STATE_DIR at a directory of this user's"
        )
    if mode & 0o077 and st.st_uid == euid and not fsgroup:
        os.chmod(state_dir, mode & ~0o077)
        log.info("state directory %s was mode %04o: now %04o (private)", where, mode, mode & ~0o077)


def _check_private_file(path: Path) -> None:
    """Refuse a state file that is a symbolic link or not a regular file (a planted link made
    the daemon create its files elsewhere); make one others can read 0600."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise StoreError(
            f"refusing {path.absolute()}: it is {what}; otelbridge opens its state files only as regular "
            "files in the state directory, so that nothing can redirect what it writes. "
            f"Fix: remove {path.absolute()} (or put the real file in its place)"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        if st.st_uid != os.geteuid():
            where, euid = path.absolute(), os.geteuid()
            raise StoreError(
                f"refusing {where}: it is mode {stat.S_IMODE(st.st_mode):04o} and belongs to uid "
                f"{st.st_uid}, not to this user (uid {euid}). Fix: chown {euid} {where}"
            )
        with suppress(FileNotFoundError):  # a WAL file SQLite removed meanwhile
            os.chmod(path, PRIVATE_FILE_MODE)


def open_private(path: Path) -> IO[str]:
    """Open (creating) a file of the state directory for appending (the lock files): 0600
    whatever the umask, never through a symbolic link."""
    _check_private_file(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # os.open's mode is masked by the umask
        return os.fdopen(fd, "a")
    except BaseException:
        os.close(fd)
        raise


#: seconds a free-space reading is trusted: ``os.statvfs`` costs ~3 µs, several times what the
#: cached comparison does, and a webhook's batch is checked against it
FREE_SPACE_TTL_S: Final = 1.0


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FreeSpace:
    """The state volume's free space against ``OTELBRIDGE_MIN_FREE_BYTES``: a reserve. Below it
    webhooks are refused (503) and readiness fails, so that what must still write to make room
    — processing, trimming the inbox, checkpoints — never meets a full disk."""

    def __init__(self, state_dir: Path, min_free_bytes: int, *, ttl_s: float = FREE_SPACE_TTL_S) -> None:
        self.state_dir = state_dir
        self.min_free_bytes = min_free_bytes
        self._ttl_s = ttl_s
        self._free = 0
        self._expires = float("-inf")  # time.monotonic() after which the reading is stale

    def problem(self, writing: int = 0, *, fresh: bool = False) -> str | None:
        """Why nothing more may be written (free space below the floor), else None, and then
        ``writing`` bytes are counted off the reading, so a burst within one reading is seen.
        A write may take the space below the floor (the reserve is sized for it); after it,
        everything is refused until space returns — no flapping at the edge. The volume is
        read again once the reading is older than the TTL, or at once with ``fresh``."""
        if self.min_free_bytes <= 0:
            return None
        now = time.monotonic()
        if fresh or now >= self._expires:
            try:
                self._free = free_bytes(self.state_dir)
            except OSError:
                return None  # cannot tell: the write itself will say what is wrong
            self._expires = now + self._ttl_s
        if self._free < self.min_free_bytes:
            return f"free space {self._free} bytes below OTELBRIDGE_MIN_FREE_BYTES ({self.min_free_bytes})"
        self._free -= writing
        return None

    def fix(self) -> str:
        return (
            f"Fix: free space on the volume of {self.state_dir.absolute()} (or grow it), or lower "
            "OTELBRIDGE_MIN_FREE_BYTES; webhooks are taken again as soon as there is room"
        )


def no_space_hint(state_dir: Path) -> str:
    """Why opening failed when the volume is (nearly) full: SQLite says only "disk I/O error"
    when it cannot allocate its shared-memory file."""
    try:
        free = free_bytes(state_dir)
    except OSError:
        return ""
    if free >= 1024 * 1024:
        return ""
    return f"; the volume has {free} bytes free. Fix: free space on it (or grow it), then start again"
