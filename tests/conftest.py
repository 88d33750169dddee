"""Shared fixtures: a fresh database per test on SQLite and on PostgreSQL, settings, accounts.

PostgreSQL tests run against POSTWARDEN_TEST_PG_URL (default: the local server, database
``test``); each test gets its own database cloned from a migrated template. Where the server
is unreachable they skip, except in CI (CI=true), where they fail: CI must prove both.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

for _name in [n for n in os.environ if n.startswith("POSTWARDEN_")]:
    if _name != "POSTWARDEN_TEST_PG_URL":
        del os.environ[_name]

from postwarden.settings import Settings  # noqa: E402
from postwarden.store import accounts, db  # noqa: E402

PG_URL = os.environ.get(
    "POSTWARDEN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_counter = itertools.count()


def _pg_admin() -> Engine:
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def _pg_available() -> str | None:
    try:
        with _pg_admin().connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    engine = db.connect(f"sqlite:///{path}")
    db.migrate(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    problem = _pg_available()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {problem}")
    name = f"pw_tpl_{os.getpid()}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = db.connect(url)
    db.migrate(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def make_database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new migrated database for one test; returns its URL."""
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "postwarden.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    template_name: str = request.getfixturevalue("pg_template")
    name = f"pw_{os.getpid()}_{next(_counter)}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))

    def _drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    request.addfinalizer(_drop)
    return PG_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_database(request.param, request, tmp_path)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url,
        secret_key="test-secret",
        min_backoff=0.2,
        max_backoff=2.0,
        poll_interval=0.05,
        lease_seconds=30,
        smtp={"connect_timeout": 2, "command_timeout": 2, "data_timeout": 2},
        helo_name="postwarden.test",
        default_bounce_domain="bounces.postwarden.test",
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = db.connect(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def account_key(engine: Engine) -> tuple[accounts.Account, str]:
    with engine.begin() as conn:
        return accounts.create(conn, "acme", "bounces.acme.test")
