"""The Alembic history: upgrade, downgrade and upgrade again, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from app.core import migrate
from app.tables import Base
from tests.services import fresh_postgres_database


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def round_trip(url: str) -> None:
    migrate.upgrade(url)
    assert tables(url) == set(Base.metadata.tables)
    migrate.downgrade(url, "base")
    assert tables(url) == set()
    migrate.upgrade(url)
    assert tables(url) == set(Base.metadata.tables)


@pytest.mark.postgres
def test_postgres_upgrade_downgrade_upgrade():
    with fresh_postgres_database() as url:
        round_trip(url)


def test_sqlite_upgrade_downgrade_upgrade(tmp_path):
    round_trip(f"sqlite:///{tmp_path / 'm.db'}")


def test_models_match_the_latest_migration(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == [], "the tables changed without a migration: alembic revision --autogenerate"
