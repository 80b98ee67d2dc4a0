"""Run Alembic migrations programmatically (``lethe db upgrade`` and embedded start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from app.core.config import get_settings

SCRIPT_LOCATION = Path(migrations.__file__).parent


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    settings = get_settings()
    if url is None and not settings.database_url:
        settings.home.mkdir(parents=True, exist_ok=True)  # the embedded SQLite file lives here
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str | None = None) -> str:
    """The database's revision (``base`` when no migration is applied)."""
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(url or get_settings().resolved_database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision() or "base"
    finally:
        engine.dispose()
