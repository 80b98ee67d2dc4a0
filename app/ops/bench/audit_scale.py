"""Audit verification time against the chain's length.

The chain is grown to each size by appending synthetic events straight into the database, in
bulk (COPY on PostgreSQL, one executemany per batch on SQLite), chained exactly as
:func:`app.audit.service.record` chains them (its :func:`event_hash`, from the head's last
hash), and the ``audit_head`` row moved along, so the service's verification finds an intact
chain and the service can go on appending after them. Then ``GET /v1/audit/verify?full=true``
(every event re-hashed from the genesis: the auditor's check the 1M goal is about) and the
default incremental ``GET /v1/audit/verify`` (from the latest signed checkpoint) are timed.
"""

from __future__ import annotations

import io
import json
import time
from collections import namedtuple
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import Connection, Engine

from app.audit.service import claim_head, event_hash, move_head
from app.audit.tables import AuditEvent
from app.ops.bench.load import Endpoint
from app.ops.bench.workload import api_client, checked

BATCH = 50_000
COLUMNS = ("seq", "tenant_id", "at", "actor", "action", "subject_type", "subject_id", "data",
           "prev_hash", "hash")
# Any object with the chained fields hashes as a stored event does.
_Chained = namedtuple("_Chained", "prev_hash at tenant_id actor action subject_type "
                                  "subject_id data")


def open_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        return create_engine(database_url, connect_args={"timeout": 60})
    return create_engine(database_url)


def chain_length(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(AuditEvent))


def append_events(engine: Engine, count: int, tenant_id: str | None) -> float:
    """Append ``count`` chained events in batches; the seconds it took."""
    started = time.perf_counter()
    while count > 0:
        batch = min(count, BATCH)
        with engine.begin() as connection:
            _append_batch(connection, batch, tenant_id)
        count -= batch
    return time.perf_counter() - started


def _append_batch(connection: Connection, count: int, tenant_id: str | None) -> None:
    # The head's lock first, as record() takes it: no service append can interleave.
    last_hash = claim_head(connection, events=count)
    last_seq = connection.scalar(select(func.coalesce(func.max(AuditEvent.seq), 0)))
    rows = _chained_rows(last_seq, last_hash, count, tenant_id)
    if connection.dialect.name == "postgresql":
        _copy_rows(connection, rows)
        # Explicit seqs do not move the serial's sequence: the service's next append would
        # collide with them.
        connection.execute(text("SELECT setval(pg_get_serial_sequence('audit_events', 'seq'), "
                                "(SELECT max(seq) FROM audit_events))"))
    else:
        connection.execute(insert(AuditEvent), rows)
    move_head(connection, rows[-1]["hash"])


def _chained_rows(last_seq: int, prev: str, count: int, tenant_id: str | None) -> list[dict]:
    at0 = datetime.now(UTC)
    rows = []
    for index in range(count):
        seq = last_seq + index + 1
        row = {"seq": seq, "tenant_id": tenant_id, "at": at0 + timedelta(microseconds=index),
               "actor": "lethe-bench", "action": "bench.synthetic", "subject_type": "job",
               "subject_id": f"job_bench{seq:012d}",
               "data": {"seq": seq, "note": "synthetic event of lethe bench service"},
               "prev_hash": prev}
        row["hash"] = prev = event_hash(_Chained(**{k: row[k] for k in _Chained._fields}))
        rows.append(row)
    return rows


def _copy_rows(connection: Connection, rows: list[dict]) -> None:
    """COPY FROM STDIN in text format, written in one buffer."""
    buffer = io.StringIO()
    for row in rows:
        data = json.dumps(row["data"], separators=(",", ":"))
        fields = (str(row["seq"]), row["tenant_id"] or "\\N",
                  row["at"].isoformat(timespec="microseconds"), row["actor"], row["action"],
                  row["subject_type"], row["subject_id"], data.replace("\\", "\\\\"),
                  row["prev_hash"], row["hash"])
        buffer.write("\t".join(fields) + "\n")
    cursor = connection.connection.driver_connection.cursor()
    with cursor.copy(f"COPY audit_events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        copy.write(buffer.getvalue())


def time_verify(endpoint: Endpoint, full: bool) -> tuple[float, dict]:
    with api_client(endpoint, timeout=1800) as client:
        started = time.perf_counter()
        verdict = checked(client.get("/v1/audit/verify",
                                     params={"full": "true"} if full else {}))
        return time.perf_counter() - started, verdict


def measure(endpoint: Endpoint, database_url: str, sizes: list[int],
            tenant_id: str | None) -> dict:
    """Grow the chain to each size (events in all, the service's own included) and time a
    full and an incremental verification there. A size the chain already exceeds is measured
    at the chain's length, once (the points' lengths only increase)."""
    engine = open_engine(database_url)
    points = []
    try:
        for size in sorted(sizes):
            missing = size - chain_length(engine)
            if missing <= 0 and points:
                continue
            insert_s = append_events(engine, missing, tenant_id) if missing > 0 else 0.0
            full_s, verdict = time_verify(endpoint, full=True)
            incremental_s, incremental = time_verify(endpoint, full=False)
            points.append({"events": chain_length(engine), "inserted": max(missing, 0),
                           "insert_s": round(insert_s, 3), "verify_full_s": round(full_s, 3),
                           "valid": verdict["valid"],
                           "verify_incremental_s": round(incremental_s, 4),
                           "incremental_valid": incremental["valid"],
                           "incremental_from_seq": incremental.get("verified_from_seq")})
    finally:
        engine.dispose()
    return {"points": points, "at_1m": at_one_million(points)}


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return slope, mean_y - slope * mean_x


def at_one_million(points: list[dict]) -> dict:
    """Measured when a point reached 1M events, else a linear fit's extrapolation."""
    million = 1_000_000
    reached = [p for p in points if p["events"] >= million]
    if reached:
        return {"seconds": reached[0]["verify_full_s"], "how": "measured",
                "incremental_seconds": reached[0]["verify_incremental_s"],
                "events": reached[0]["events"]}
    if len(points) < 2:
        return {"seconds": None, "how": "too few points to extrapolate"}
    xs = [p["events"] for p in points]
    slope, intercept = linear_fit(xs, [p["verify_full_s"] for p in points])
    slope_inc, intercept_inc = linear_fit(xs, [p["verify_incremental_s"] for p in points])
    return {"seconds": round(slope * million + intercept, 2), "how": "extrapolated",
            "incremental_seconds": round(slope_inc * million + intercept_inc, 3),
            "fit": {"seconds_per_million_events": round(slope * million, 3),
                    "intercept_s": round(intercept, 4), "from_events": xs}}
