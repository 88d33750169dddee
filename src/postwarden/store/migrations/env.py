"""Alembic environment: runs on the engine Postwarden hands over in ``config.attributes``."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from postwarden.store import tables


def render_item(kind: str, item: Any, autogen_context: Any) -> str | bool:
    """Write the UTC datetime type as the plain column type it stores, so migrations need no
    import of Postwarden's code."""
    if kind == "type" and isinstance(item, tables.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


config = context.config
engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=tables.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()
