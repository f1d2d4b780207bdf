"""Which PostgreSQL durakit talks to, and whether its schema is current.

DURAKIT_DATABASE_URL selects a server, whose schema an operator upgrades with
`durakit db upgrade`. Without it, durakit starts an embedded PostgreSQL (the `pgserver`
package) under DURAKIT_HOME, leaves it running for the next command, and migrates it
itself.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg

from durakit.errors import DatabaseUnavailable, SchemaBehind
from durakit.settings import KitSettings

# Alembic revisions in order; the last is the head this code needs. A test checks it
# against the migration scripts, so this module never has to import alembic.
SCHEMA_REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
SCHEMA_HEAD = SCHEMA_REVISIONS[-1]
# LangGraph checkpoint migrations revision 0001 records (PostgresSaver.MIGRATIONS of the
# pinned langgraph-checkpoint-postgres; a test checks it), so that reading the tables
# never has to import LangGraph.
CHECKPOINT_MIGRATIONS = 10
CONNECT_TIMEOUT_SECONDS = 5
# The tables the head revision promises and durakit reads or writes: its own, LangGraph's
# checkpoints, procrastinate's queue. (The sandbox's tables are the demo adapters'.) A
# test checks the list against what the migrations create.
SCHEMA_TABLES = (
    "durakit_threads", "durakit_effects", "durakit_decisions", "durakit_events", "durakit_timers",
    "checkpoint_migrations", "checkpoints", "checkpoint_blobs", "checkpoint_writes",
    "procrastinate_jobs", "procrastinate_events", "procrastinate_periodic_defers", "procrastinate_workers",
)
MISSING_TABLES_SQL = """
SELECT name FROM unnest(%s::text[]) WITH ORDINALITY AS promised(name, position)
WHERE to_regclass(name) IS NULL ORDER BY position
"""


@dataclass(frozen=True)
class Database:
    url: str
    embedded: bool

    @property
    def display(self) -> str:
        return "the embedded PostgreSQL" if self.embedded else redact(self.url)


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def locate(settings: KitSettings) -> Database:
    """The database this process should use, started and migrated if it is the embedded one."""
    if settings.database_url:
        return Database(settings.database_url, embedded=False)
    return Database(start_embedded(settings.home), embedded=True)


# pgserver counts the processes using its server in this JSON file, which each process
# rewrites in place when it starts and exits. A process killed while writing it leaves it
# unreadable, and from then on no process can start the server. durakit never stops the
# server by that count (cleanup_mode=None), so it keeps the file empty and unused.
PGSERVER_PID_LIST = ".handle_pids.json"


def forget_pgserver_handles(pgdata: Path) -> None:
    """Reset pgserver's process list, atomically, before pgserver reads it."""
    if pgdata.is_dir():
        scratch = pgdata / f"{PGSERVER_PID_LIST}.{os.getpid()}"
        scratch.write_text("[]")
        os.replace(scratch, pgdata / PGSERVER_PID_LIST)


def start_embedded(home: Path) -> str:
    """Start (or find running) the embedded PostgreSQL under `home` and return its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns about XDG_RUNTIME_DIR on import
        import pgserver

        try:
            home.mkdir(parents=True, exist_ok=True)
            forget_pgserver_handles(home / "pgdata")
            # cleanup_mode=None: the server outlives this process, so the next command
            # (and a process resuming after a crash) finds it running.
            server = pgserver.get_server(home / "pgdata", cleanup_mode=None)
            atexit.unregister(server._cleanup)  # it would only rewrite the process list
            if not embedded_running(home):
                # pgserver hands back the handle this process got earlier even if the server
                # has stopped since (`durakit db stop`, a restart): start it again.
                with server._lock:
                    server.ensure_postgres_running()
        except Exception as exc:  # pgserver raises plain exceptions of several kinds
            raise DatabaseUnavailable(
                f"The embedded PostgreSQL under {home} could not start ({one_line(exc)})."
            ) from exc
    return server.get_uri()


def stop_embedded(home: Path, timeout: float = 30.0) -> bool:
    """Stop the embedded PostgreSQL under `home` if it runs; its data stays. True if it ran.

    Sends the postmaster SIGINT (PostgreSQL's "fast" shutdown: running sessions end,
    committed work is kept) and waits for it to exit.
    """
    pgdata = home / "pgdata"
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        if not is_postmaster_of(pid, pgdata):
            return False  # a stale pid file; the number may belong to another process now
        os.kill(pid, signal.SIGINT)
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    raise DatabaseUnavailable(f"The embedded PostgreSQL (pid {pid}) did not stop within {timeout:.0f} seconds.")


def embedded_running(home: Path) -> bool:
    """True if the embedded PostgreSQL under `home` is up."""
    pgdata = home / "pgdata"
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return False
    return is_postmaster_of(pid, pgdata)


def is_postmaster_of(pid: int, pgdata: Path) -> bool:
    if not Path("/proc/self").exists():
        return True  # no /proc to ask (macOS): trust the pid file, as pg_ctl does
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"postgres") and str(pgdata.resolve()).encode() in cmdline


# SQLSTATEs of a session the server ended: admin_shutdown, crash_shutdown, cannot_connect_now.
SESSION_ENDED = {"57P01", "57P02", "57P03"}


def is_connection_lost(exc: BaseException) -> bool:
    """The connection broke or could not be had (server restart, terminated session,
    network), as opposed to a statement failing on a live connection (a statement
    timeout, a deadlock, a serialization failure)."""
    from psycopg_pool import PoolTimeout

    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in SESSION_ENDED
    return False


def connect(url: str, **kwargs: object) -> psycopg.Connection:
    """A plain connection, failing within a few seconds with a sentence if the server is down."""
    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"Cannot reach the database at {redact(url)} ({one_line(exc)})."
        ) from exc


def current_revision(url: str) -> str | None:
    """The alembic revision the database is at, or None if it was never migrated."""
    with connect(url, autocommit=True) as conn:
        return _revision(conn)


def _revision(conn: psycopg.Connection) -> str | None:
    exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version LIMIT 1").fetchone()
    return row[0] if row else None


# The databases this process found current: checked once, not at every Runner.open.
_current: set[str] = set()


def ensure_schema(database: Database) -> None:
    """Refuse to work on a schema that is behind or damaged; migrate the embedded database
    instead. Checked once per process and database."""
    if database.url in _current:
        return
    with connect(database.url, autocommit=True) as conn:
        revision = _revision(conn)
        if revision == SCHEMA_HEAD:
            check_schema_whole(conn, database)
            return
    if revision is not None and revision not in SCHEMA_REVISIONS:
        raise DatabaseUnavailable(
            f"The database at {database.display} has schema revision {revision}, which this "
            "durakit does not know; upgrade durakit."
        )
    if database.embedded:
        upgrade(database.url)
        with connect(database.url, autocommit=True) as conn:
            check_schema_whole(conn, database)
        return
    found = "no durakit schema" if revision is None else f"schema revision {revision}"
    raise SchemaBehind(
        f"The database at {database.display} has {found} but durakit needs {SCHEMA_HEAD}; "
        "run `durakit db upgrade`."
    )


def check_schema_whole(conn: psycopg.Connection, database: Database) -> None:
    """At the head revision, the schema must also hold what that revision promises."""
    check_tables(conn, database)
    check_checkpoint_migrations(conn, database)
    _current.add(database.url)


def check_tables(conn: psycopg.Connection, database: Database) -> None:
    """Every table of SCHEMA_TABLES must exist: alembic records only the revision, so a
    table dropped since would otherwise be found midway through a run, after its effects."""
    missing = [row[0] for row in conn.execute(MISSING_TABLES_SQL, (list(SCHEMA_TABLES),)).fetchall()]
    if missing:
        others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatabaseUnavailable(
            f"The database at {database.display} is at schema revision {SCHEMA_HEAD} but has no table "
            f"{missing[0]}{others}; restore it from a backup, as `durakit db upgrade` does not recreate "
            "the tables of a revision already applied."
        )


def check_checkpoint_migrations(conn: psycopg.Connection, database: Database) -> None:
    """The database must hold the LangGraph checkpoint migrations alembic records (a stock
    saver's setup() would otherwise add them behind alembic's back)."""
    applied = conn.execute("SELECT count(*) FROM checkpoint_migrations").fetchone()[0]
    if applied != CHECKPOINT_MIGRATIONS:
        raise DatabaseUnavailable(
            f"The database at {database.display} has {applied} LangGraph checkpoint migrations but durakit's "
            f"schema has {CHECKPOINT_MIGRATIONS}; use it with the langgraph-checkpoint-postgres version pinned in "
            "durakit's pyproject.toml."
        )


def check_installed_saver() -> None:
    """The installed langgraph-checkpoint-postgres must expect the checkpoint migrations
    alembic records. Checked when a process first needs LangGraph, not at every start."""
    from langgraph.checkpoint.postgres import PostgresSaver

    if len(PostgresSaver.MIGRATIONS) != CHECKPOINT_MIGRATIONS:
        raise DatabaseUnavailable(
            f"The installed langgraph-checkpoint-postgres expects {len(PostgresSaver.MIGRATIONS)} checkpoint "
            f"migrations but durakit's schema has {CHECKPOINT_MIGRATIONS}; install the versions pinned in "
            "durakit's pyproject.toml."
        )


def migrations_dir() -> Path:
    spec = importlib.util.find_spec("durakit.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # An editable install (`pip install -e .`) runs from the checkout, where the migrations
    # are its top-level alembic/ folder: a namespace package that setuptools' editable
    # finder does not resolve under a package-dir mapping.
    checkout = Path(__file__).resolve().parent.parent / "alembic"
    if (checkout / "env.py").is_file():
        return checkout
    raise RuntimeError("durakit's migrations are not installed with the package.")


def alembic_config(url: str):  # -> alembic.config.Config, imported lazily (slow import)
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply durakit's migrations (LangGraph's checkpoint tables included) up to `revision`."""
    from alembic import command

    connect(url).close()  # fail with a sentence, not a SQLAlchemy traceback, if it is down
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
