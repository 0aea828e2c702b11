"""A real, throwaway PostgreSQL server for the tests: initdb in a temporary directory, listening
on 127.0.0.1 on a port picked at run time, stopped and deleted at the end of the session.

Registered in tests/conftest.py, so any test can ask for ``postgres_server`` (one server for the
session) or ``postgres_url`` (a fresh, empty database of its own on that server). Without
PostgreSQL's binaries those tests are skipped, except in CI, where
``TEST_REQUIRE_POSTGRES=1`` turns the skip into a failure so they can never silently
not run. ``TEST_POSTGRES_BIN`` names the directory of ``initdb`` and ``pg_ctl``
instead of the lookup (a directory without them means "not installed").
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    import psycopg

BIN_ENV = "TEST_POSTGRES_BIN"
REQUIRE_ENV = "TEST_REQUIRE_POSTGRES"
NOT_INSTALLED = "PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it"

ROLE = "otelbridge"
DATABASE = "otelbridge"
SUPERUSER = "postgres"
STARTUP_TIMEOUT = 30.0
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed.

    Debian's versioned directories come first (newest version): what is on PATH may be a
    wrapper, not the binaries. ``TEST_POSTGRES_BIN`` replaces the lookup.
    """
    override = os.environ.get(BIN_ENV)
    if override is not None:
        return Path(override) if _has_binaries(Path(override)) else None
    versioned = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(part) for part in re.findall(r"\d+", p.parent.name)],
        reverse=True,
    )
    for candidate in versioned:
        if _has_binaries(candidate):
            return candidate
    on_path = shutil.which("pg_ctl")
    if on_path is not None and _has_binaries(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    return None


def _has_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def require_postgres_bin() -> Path:
    """:func:`find_postgres_bin`, skipping the test when there is none -- failing instead when
    ``TEST_REQUIRE_POSTGRES=1`` (CI), so a missing install cannot pass as green."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(NOT_INSTALLED)
        pytest.skip(NOT_INSTALLED)
    return bin_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, run as the ``postgres`` user when we are
    root (initdb and pg_ctl refuse root). Its data directory and port survive :meth:`stop` and
    :meth:`stop_immediate`, so :meth:`start` brings back the same server; :meth:`close` deletes
    it.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="otelbridge-pg-"))
        self.data_dir = self.base / "data"
        self.log_file = self.base / "server.log"
        self.port: int | None = None
        self.running = False
        self._admin_password = secrets.token_hex(16)
        self._password = secrets.token_hex(16)
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam(SUPERUSER)
            except KeyError:
                shutil.rmtree(self.base, ignore_errors=True)
                raise RuntimeError(
                    "running as root, but there is no 'postgres' user to run PostgreSQL as "
                    "(Debian's postgresql package creates it)"
                ) from None
            os.chown(self.base, self._run_as.pw_uid, self._run_as.pw_gid)

    # -- URLs ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The application's URL: role ``otelbridge`` (not a superuser), its database."""
        return self._url(ROLE, self._password, DATABASE)

    @property
    def admin_url(self) -> str:
        """The superuser's URL, for what the application may not do (database ``postgres``)."""
        return self._url(SUPERUSER, self._admin_password, "postgres")

    def database_url(self, name: str) -> str:
        """The application role's URL for database ``name``."""
        return self._url(ROLE, self._password, name)

    def _url(self, user: str, password: str, database: str) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started yet")
        return f"postgresql://{quote(user)}:{quote(password)}@127.0.0.1:{self.port}/{quote(database)}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (the first time: initdb, role and database first) and return once it
        accepts connections; within 30 s, else RuntimeError with the log's tail."""
        if self.running:
            return
        first = self.port is None
        if first:
            self._initdb()
        # A port picked free can be taken before the server binds it: on the first start only
        # (later the URLs must not change), try another.
        for attempt in range(3):
            if first:
                self.port = _free_port()
            self._write_settings()
            deadline = time.monotonic() + STARTUP_TIMEOUT
            started = self._pg_ctl(
                "start", "-w", "-t", str(int(STARTUP_TIMEOUT)), "-l", str(self.log_file), check=False
            )
            if started.returncode == 0:
                break
            if first and attempt < 2 and "already in use" in self._log_tail():
                continue
            raise RuntimeError(self._failure("pg_ctl start failed", started))
        self.running = True
        self._wait_until_accepting(deadline)
        if first:
            self._create_role_and_database()

    def stop(self) -> None:
        """A clean shutdown (``pg_ctl stop -m fast``)."""
        self._stop("fast")

    def stop_immediate(self) -> None:
        """Kill the server without a checkpoint (``pg_ctl stop -m immediate``), as a crash would:
        the next :meth:`start` goes through crash recovery."""
        self._stop("immediate")

    def close(self) -> None:
        """Stop the server if it runs and delete its directory."""
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- administration -----------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """A new, empty database owned by ``otelbridge``, so a test has one of its own; its URL."""
        from psycopg import sql

        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: lowercase letters, digits and _ (at most 63)")
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE))
            )
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting whoever is still in it."""
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def terminate_backends(self, application_name_like: str | None = None) -> int:
        """``pg_terminate_backend`` every client connection (but this one), or those whose
        application_name matches the LIKE pattern, as a server-side disconnect would; waits up to
        5 s for each to be gone. How many were terminated."""
        with self._admin() as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND (%(like)s::text IS NULL OR application_name LIKE %(like)s::text)",
                {"like": application_name_like},
            ).fetchone()
        assert row is not None and isinstance(row[0], int)
        return row[0]

    # -- internals ----------------------------------------------------------------------------

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        import psycopg

        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10)

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as.pw_name, "--", *command]
        result = subprocess.run(
            command,
            cwd=self.base,  # the postgres user may not be allowed into ours
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(self._failure(f"{args[0]} failed", result))
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        pg_ctl = str(self.bin_dir / "pg_ctl")
        return self._run(pg_ctl, args[0], "-D", str(self.data_dir), *args[1:], check=check)

    def _initdb(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self._admin_password + "\n")
        if self._run_as is not None:
            os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
        try:
            self._run(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=md5",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # a throwaway cluster
            )
        finally:
            pwfile.unlink(missing_ok=True)
        # Passwords over TCP from 127.0.0.1, nothing else (no unix-socket or remote logins).
        (self.data_dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 md5\n")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'otelbridge.conf'\n")

    def _write_settings(self) -> None:
        settings = self.data_dir / "otelbridge.conf"
        settings.write_text(
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.base}'\n"
            # Survives a killed server (written to the OS at commit), not a killed machine: fine
            # for a throwaway cluster, and much faster.
            "fsync = off\n"
        )
        if self._run_as is not None:
            os.chown(settings, self._run_as.pw_uid, self._run_as.pw_gid)

    def _wait_until_accepting(self, deadline: float) -> None:
        import psycopg

        while True:
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on port {self.port} did not accept connections within "
                        f"{STARTUP_TIMEOUT:.0f} s ({e}); server log:\n{self._log_tail()}"
                    ) from e
                time.sleep(0.1)
            else:
                return

    def _create_role_and_database(self) -> None:
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
                    sql.Identifier(ROLE), sql.Literal(self._password)
                )
            )
        self.create_database(DATABASE)

    def _stop(self, mode: str) -> None:
        if not self.running:
            return
        self._pg_ctl("stop", "-m", mode, "-w", "-t", "30")
        self.running = False

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _failure(self, what: str, result: subprocess.CompletedProcess[str]) -> str:
        return (
            f"{what} (exit {result.returncode}):\n{result.stdout}{result.stderr}\n"
            f"server log ({self.log_file}):\n{self._log_tail()}"
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session, deleted at its end. Tests must leave it
    running; one that stops or crashes a server should start a :class:`PostgresServer` of its
    own."""
    server = PostgresServer(require_postgres_bin())
    with contextlib.closing(server):
        server.start()
        yield server


_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty database of this test's own (owned by ``otelbridge``), dropped
    after the test."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:48]
    name = f"t{next(_database_numbers)}_{slug}"
    url = postgres_server.create_database(name)
    yield url
    if postgres_server.running:
        postgres_server.drop_database(name)
