"""The FastAPI application: routers of every domain, error handling, limits, metrics."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from app.audit.routes import router as audit_router
from app.catalogue.routes import router as catalogue_router
from app.console.routes import install_console
from app.core.config import get_settings
from app.core.errors import install_error_handlers
from app.core.guards import refuse_unstorable_text
from app.core.limits import RequestSizeLimit
from app.core.openapi import install_problem_schema
from app.core.query_params import refuse_undeclared_query_params
from app.core.storage import get_blob_store
from app.datasets.routes import router as datasets_router
from app.deletion_requests.routes import router as deletion_requests_router
from app.deletion_requests.service import check_configured_methods
from app.jobs.routes import router as jobs_router
from app.models.routes import router as models_router
from app.ops.metrics import RequestMetrics
from app.ops.routes import router as ops_router
from app.tenants.routes import router as api_keys_router
from app.webhooks.routes import router as webhooks_router

DESCRIPTION = """Machine unlearning as a service. Register a model and the data it was trained
on, send data-deletion requests, poll the unlearning jobs, download the unlearned checkpoints.
Every `/v1` route needs `Authorization: Bearer <token>` (`lethe apikey create NAME`)."""


@asynccontextmanager
async def lifespan(app: FastAPI):
    from worker.dispatch import start_embedded_worker, stop_embedded_worker

    # No upload outlives its process: what dead processes left in staging (a killed upload's
    # copy of the user's data) goes now; live replicas' and workers' staging is locked.
    get_blob_store().sweep_staging(older_than=time.time())
    if get_settings().embedded_worker and app.state.run_worker:
        start_embedded_worker()
    try:
        yield
    finally:
        stop_embedded_worker()


def create_app(run_worker: bool = True) -> FastAPI:
    settings = get_settings()
    check_configured_methods()
    # Before any route's own dependencies, on every route: /v1 routes refuse a query parameter
    # they do not declare, then any route refuses text the database cannot store.
    app = FastAPI(title="Lethe", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  dependencies=[Depends(refuse_undeclared_query_params),
                                Depends(refuse_unstorable_text)])
    app.state.run_worker = run_worker
    install_error_handlers(app)
    install_problem_schema(app)
    # Routes are matched in order, one by one: the jobs' come first, as every waiting client
    # polls them (their /v1/jobs prefix is no other router's).
    for router in (jobs_router, ops_router, catalogue_router, datasets_router, models_router,
                   deletion_requests_router, audit_router, webhooks_router, api_keys_router):
        app.include_router(router)
    install_console(app)  # /ui: the web console, signed in with an API key

    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    return app
