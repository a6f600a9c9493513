"""Engines of the provenance database: one per URL and process, tuned per backend.

SQLite: WAL journal, ``busy_timeout``, foreign keys on, and writing transactions
opened with ``BEGIN IMMEDIATE`` (execution option ``starnet_write``), so concurrent
writers wait for the lock instead of failing with "database is locked".
PostgreSQL: pre-ping pooled connections. After ``fork`` a child drops the pooled
connections it inherited.

Alembic is configured in code (:func:`alembic_config`): migrations run from the
installed package, whatever the working directory, with no ``alembic.ini``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flows.provenance_records import ProvenanceError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")

_engines: dict[tuple[str, float], Engine] = {}
_ready: set[str] = set()  # URLs whose schema this process has seen at head
_lock = threading.Lock()


def mark_ready(url: str) -> None:
    """Remember that the schema at ``url`` is at head (checked once per process)."""
    with _lock:
        _ready.add(url)


def is_ready(url: str) -> bool:
    with _lock:
        return url in _ready


def alembic_config(url: str | None = None) -> Config:
    """Alembic configuration built in code, so migrations work from the installed package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages; text SQLAlchemy cannot read as a URL
    too (its own masking raises there: a one-line error must not become a traceback)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        from flows.settings import hide_password  # the settings' check, without SQLAlchemy

        return hide_password(url)


def get_engine(url: str, busy_timeout_s: float = 30.0) -> Engine:
    """The process-wide engine for ``url`` (SQLite: WAL, busy timeout, foreign keys)."""
    key = (url, float(busy_timeout_s))
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create_engine(url, busy_timeout_s)
        return engine


def dispose_engines() -> None:
    """Close every cached engine (tests, shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _ready.clear()


def _after_fork_in_child() -> None:
    # pooled connections belong to the parent: drop them without closing its sockets
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _create_engine(url: str, busy_timeout_s: float) -> Engine:
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "postgresql":
        return create_engine(u, pool_pre_ping=True)
    if backend != "sqlite":
        raise ProvenanceError(
            f"database url {safe_url(url)!r}: unsupported backend {backend!r} "
            "(use sqlite:///path or postgresql+psycopg2://...)"
        )
    if u.database and u.database != ":memory:":
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, connect_args={"timeout": busy_timeout_s})
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        # switching a new database to WAL takes an exclusive lock, and SQLite answers
        # "database is locked" at once, not after the busy timeout, when another process
        # switches it at the same moment (two workers starting on an empty database)
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                cur.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # a writer takes the write lock up front: a deferred transaction that reads and
        # then writes fails at once with SQLITE_BUSY when another writer got in between
        immediate = conn.get_execution_options().get("starnet_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
