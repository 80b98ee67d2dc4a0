"""Alembic environment: the URL comes from Lethe's settings unless the caller set one."""

from alembic import context
from sqlalchemy import create_engine, pool

from app.core.config import get_settings
from app.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _use_wal(connection) -> None:
    """Put a SQLite file in WAL mode while nothing else has it open (see app.core.db)."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")


def _run(connection) -> None:
    # Batch mode lets ALTERs run on SQLite, which cannot alter most columns in place.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    _use_wal(connection)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
