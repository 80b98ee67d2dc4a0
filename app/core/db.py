"""SQLAlchemy engine, sessions and the declarative base shared by every domain's tables."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import TypeVar

from sqlalchemy import JSON, DateTime, MetaData, create_engine, event, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.core.config import get_settings

T = TypeVar("T")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict: JSON, list: JSON}


def utcnow() -> datetime:
    return datetime.now(UTC)


def lock_row(db: Session, table, row_id: str) -> bool:
    """Lock one row for the rest of the transaction: a row lock on PostgreSQL, the database
    write lock on SQLite (whose SELECT ... FOR UPDATE is a no-op). False if there is no row."""
    return db.execute(update(table).where(table.id == row_id).values(id=table.id)).rowcount > 0


def in_chunks(values, size: int = 10_000) -> Iterator[list]:
    """Slices of ``values`` small enough for one ``IN (...)`` on every backend."""
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # wait for locks rather than fail
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the API read while the in-process worker writes. The mode is stored in the file
    # (migrations set it); switching needs the database to itself, so only switch if needed.
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


# A pooled connection idle for longer than this is pinged before use (the server may have
# restarted meanwhile); one in steady use is not: a ping per checkout was a tenth of a poll.
PING_AFTER_IDLE_SECONDS = 5.0


def _note_checkin(_dbapi_connection, record) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
    idle = time.monotonic() - record.info.get("checked_in_at", float("-inf"))
    if idle < PING_AFTER_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
    except Exception as exc:  # noqa: BLE001 - any failure means a dead connection
        raise DisconnectionError() from exc  # the pool discards it and checks out another


def make_engine(url: str, pool_size: int = 48) -> Engine:
    """An engine whose pool covers every thread that may hold a connection at once: a request
    keeps its connection between the steps it runs on different threads, so with fewer
    connections than threads, requests holding one wait for a thread that waits for one.
    Last in, first out, so a quiet spell leaves idle (pinged) connections, not a busy one."""
    pool = {"pool_size": pool_size, "max_overflow": pool_size // 2, "pool_use_lifo": True}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, **pool)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
    return make_engine(url, settings.resolved_db_pool_size)


@lru_cache
def _session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


def new_session() -> Session:
    return _session_factory()()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# PostgreSQL's deadlock_detected and serialization_failure: the transaction lost a race and
# may simply run again.
RETRYABLE_SQLSTATES = {"40P01", "40001"}


def lost_a_race(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in \
        RETRYABLE_SQLSTATES


def retry_on_conflict(work: Callable[[Session], T], attempts: int = 5) -> T:
    """Run ``work`` in a transaction of its own, again (after a short, growing pause) when it
    loses a deadlock or serialisation race, which a caller must never see."""

    def in_own_session() -> T:
        with session_scope() as db:
            return work(db)

    return _retrying(in_own_session, attempts)


def retry_in_session(db: Session, work: Callable[[], T], attempts: int = 5) -> T:
    """The same within a request's session: roll back and run ``work`` again."""

    def once() -> T:
        try:
            return work()
        except DBAPIError:
            db.rollback()
            raise

    return _retrying(once, attempts)


def _retrying(once: Callable[[], T], attempts: int) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return once()
        except DBAPIError as exc:
            if not lost_a_race(exc) or attempt == attempts:
                raise
            time.sleep(0.05 * attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def get_db() -> Iterator[Session]:
    """FastAPI dependency: one session per request; routes commit explicitly."""
    session = new_session()
    try:
        yield session
    finally:
        session.close()


def reset_caches() -> None:
    """Forget the cached engine and settings (tests switch databases)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    _session_factory.cache_clear()
    get_settings.cache_clear()
