"""Database fixtures: the same tests run against SQLite and a real PostgreSQL server.

``db_url`` is parametrized over ``sqlite`` (a file in ``tmp_path``) and ``postgres``
(a fresh schema per test in ``$STARNET_TEST_POSTGRES_URL``; start a server with
``eval "$(.ci/postgres.sh)"``). Without that variable, or with the server down,
the postgres cases are skipped with the reason; with ``STARNET_REQUIRE_POSTGRES=1``
(CI) they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from flows.provenance import ProvenanceDB, dispose_engines, safe_url

POSTGRES_URL_ENV = "STARNET_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "STARNET_REQUIRE_POSTGRES"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skips (or fails under STARNET_REQUIRE_POSTGRES=1) without one."""
    url = os.environ.get(POSTGRES_URL_ENV)
    reason = None
    if not url:
        reason = f'{POSTGRES_URL_ENV} is not set (eval "$(.ci/postgres.sh)" starts a server)'
    else:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as e:
            reason = f"PostgreSQL at {safe_url(url)} is unreachable: {str(e.orig).strip()}"
        finally:
            engine.dispose()
    if reason is not None:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    assert url is not None
    return url


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose search_path is a fresh, empty schema (dropped afterwards)."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database (no schema yet) on each backend."""
    if request.param == "postgres":
        yield request.getfixturevalue("postgres_schema_url")
        return
    path = tmp_path_factory.mktemp("db") / "provenance.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        dispose_engines()


@pytest.fixture
def provenance_db(db_url: str) -> ProvenanceDB:
    """A :class:`ProvenanceDB` on ``db_url`` with its schema at head."""
    db = ProvenanceDB(db_url)
    db.ensure_schema()
    return db
