"""The migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from postwarden.domain.status import Kind, Status
from postwarden.store import tables


def test_migrations_match_the_declared_tables(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, tables.metadata) == []


def test_status_and_kind_checks_follow_the_enums(engine: Engine) -> None:
    inspector = inspect(engine)
    for table, column, enum in (("messages", "status", Status), ("events", "kind", Kind)):
        (check,) = [c for c in inspector.get_check_constraints(table) if column in c["sqltext"]]
        for member in enum:
            assert f"'{member.value}'" in check["sqltext"], (table, member)
