"""The floor beside the service's job poll: the least a FastAPI route can do for the same answer.

It does what a poll cannot avoid: the sha256 of the bearer token, a SELECT on ``api_keys``,
one SELECT of the job row through SQLAlchemy, the row back as JSON, behind uvicorn started as
``lethe serve`` starts it (one process, log level info). What the service spends beyond this
(middleware, validation, its own query shapes) is what the ratio to the floor shows.

Run as ``python -m app.ops.bench.floor --port P --database-url URL``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

from fastapi import FastAPI, Header, Response
from sqlalchemy import create_engine, event, text

DATABASE_URL_ENV = "LETHE_BENCH_FLOOR_DATABASE_URL"
# As many connections as the threads FastAPI runs sync routes on (anyio's default is 40), so
# the pool is never what a poll waits for (the service sizes its pool the same way).
POOL_SIZE = 48

KEY_QUERY = text("SELECT tenant_id, id FROM api_keys "
                 "WHERE token_hash = :token_hash AND revoked_at IS NULL")
JOB_QUERY = text("SELECT * FROM jobs WHERE id = :job_id AND tenant_id = :tenant_id")


def _sqlite_busy_timeout(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA busy_timeout=30000")  # as the service: wait, not fail


def create_floor_app() -> FastAPI:
    url = os.environ[DATABASE_URL_ENV]
    options = {"pool_size": POOL_SIZE, "max_overflow": POOL_SIZE // 2}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **options)
        event.listen(engine, "connect", _sqlite_busy_timeout)
    else:
        engine = create_engine(url, **options)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/v1/jobs/{job_id}")
    def poll(job_id: str, authorization: str = Header("")) -> Response:
        token = authorization.removeprefix("Bearer ")
        token_hash = hashlib.sha256(token.encode()).hexdigest()
        with engine.connect() as connection:
            key = connection.execute(KEY_QUERY, {"token_hash": token_hash}).first()
            if key is None:
                return Response(status_code=401)
            job = connection.execute(JOB_QUERY, {"job_id": job_id,
                                                 "tenant_id": key.tenant_id}).first()
        if job is None:
            return Response(status_code=404)
        return Response(json.dumps(dict(job._mapping), default=str),
                        media_type="application/json")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    os.environ[DATABASE_URL_ENV] = args.database_url
    # As `lethe serve` runs the API: an import string and a factory, log level info.
    uvicorn.run("app.ops.bench.floor:create_floor_app", factory=True, host=args.host,
                port=args.port, log_level="info")


if __name__ == "__main__":
    main()
