"""The figures, one function each, against a running stack (see ``runner`` for the order)."""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx

from app.ops.bench.load import (
    Endpoint,
    SamplePool,
    deletion_requests,
    poll_requests,
    run_load,
)
from app.ops.bench.workload import (
    DELETION_BODY,
    checked,
    submit,
    wait_for_job,
    wait_until_idle,
)

# How often the submit-to-running probe polls the job (it adds load to the server it times).
PROBE_INTERVAL_S = 0.01


def polls(endpoint: Endpoint, job_id: str, concurrency: int, seconds: float,
          warmup: float) -> dict:
    """GET /v1/jobs/{id} back to back from ``concurrency`` keep-alive clients."""
    return run_load(endpoint, poll_requests(job_id), concurrency, seconds, warmup).summary()


def deletions(endpoint: Endpoint, model_ids: list[str], pool: SamplePool, concurrency: int,
              seconds: float, warmup: float) -> dict:
    """POST deletion requests (one fresh sample each) on ``model_ids`` in turn; the jobs they
    start run meanwhile (the first request on an idle model starts one at once, the next ones
    join a queued job or queue one)."""
    jobs: set[str] = set()

    def note_job(status: int, content: bytes) -> None:
        if status == 202:
            jobs.add(json.loads(content).get("job_id"))

    result = run_load(endpoint, deletion_requests(model_ids, pool, DELETION_BODY), concurrency,
                      seconds, warmup, observe=note_job)
    return result.summary() | {"models": len(model_ids), "jobs_created": len(jobs - {None})}


def submit_to_running(client: httpx.Client, model_id: str, sample_id: str,
                      settle_s: float) -> dict:
    """POST a deletion request on an idle stack and poll its job until it is no longer queued.

    Idle: no job queued or running, and ``settle_s`` since: a worker is idle a while after its
    last job finished, not at once (after a job's commit it still purges superseded blobs and
    erases forgotten samples, worker.maintenance.after_completion, before it takes the next
    message: a few tenths of a second here). The client's figure runs from just
    before the POST to the first poll answering anything but queued (normally running; a job
    finished between two polls counts at that poll). The server's figure is the job's
    started_at (set when a worker claims it) minus created_at."""
    wait_until_idle(client)
    time.sleep(settle_s)
    started = time.perf_counter()
    request = submit(client, model_id, sample_id)
    accepted = time.perf_counter()
    job_id = request["job_id"]
    while True:
        job = checked(client.get(f"/v1/jobs/{job_id}"))
        if job["status"] != "queued":
            observed = time.perf_counter()
            break
        time.sleep(PROBE_INTERVAL_S)
    finished = wait_for_job(client, job_id)
    return {"job_id": job_id, "seconds": round(observed - started, 4),
            "accept_s": round(accepted - started, 4), "observed_status": job["status"],
            "server_seconds": round(_seconds(finished["created_at"], finished["started_at"]), 4),
            "job": finished}


def _seconds(start: str | None, end: str | None) -> float:
    if start is None or end is None:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def job_overhead(job: dict) -> dict:
    """A finished job's wall time on its worker (started_at to finished_at) apart from the
    methods' own: the overhead is everything else, the acceptance gate's judging included. The
    job records, per candidate of its chain, the seconds its method ran and the gate's
    (``metrics.candidates[].method_seconds`` and ``gate_seconds``), and ``metrics.duration_s``,
    from the start of the run to its metrics (before the version's blobs are stored and the
    transaction commits)."""
    metrics = job.get("metrics") or {}
    wall = _seconds(job["started_at"], job["finished_at"])
    candidates = metrics.get("candidates", [])
    method = sum(c.get("method_seconds") or 0.0 for c in candidates)
    gate = sum(c.get("gate_seconds") or 0.0 for c in candidates)
    duration = metrics.get("duration_s")
    return {"job_id": job["id"], "status": job["status"], "wall_s": round(wall, 4),
            "method_s": round(method, 4), "gate_s": round(gate, 4),
            "overhead_s": round(wall - method, 4),
            "load_and_evaluate_s": (None if duration is None
                                    else round(duration - method - gate, 4)),
            "store_and_commit_s": None if duration is None else round(wall - duration, 4)}


def cancel_open_jobs(client: httpx.Client) -> int:
    """Cancel every queued or running job (a load point's backlog), so the next figure starts
    on an idle stack without waiting for jobs nobody measures."""
    cancelled = 0
    for status in ("queued", "running"):
        for job in checked(client.get("/v1/jobs", params={"status": status,
                                                           "limit": 1000}))["items"]:
            response = client.post(f"/v1/jobs/{job['id']}/cancel")
            cancelled += response.status_code == 202
    return cancelled


def jobs_per_minute(client: httpx.Client, model_ids: list[str], pool: SamplePool,
                    workers: int, seconds: float) -> dict:
    """Rounds of one deletion request on each model at once (each its own job, on a distinct
    model, so jobs never wait for one another's model), each round until all its jobs are
    finished, for at least ``seconds`` (one round at least): jobs per minute over the rounds'
    spans, each from its first job's creation to its last one's end, as the jobs' own
    timestamps say (the client's wait between rounds is left out)."""
    wait_until_idle(client)
    jobs, span, started = [], 0.0, time.perf_counter()
    while not jobs or time.perf_counter() - started < seconds:
        job_ids = [submit(client, model_id, pool.take(model_id))["job_id"]
                   for model_id in model_ids]
        batch = [wait_for_job(client, job_id) for job_id in job_ids]
        span += _seconds(min(job["created_at"] for job in batch),
                         max(job["finished_at"] for job in batch))
        jobs += batch
    statuses = [job["status"] for job in jobs]
    walls = [_seconds(j["started_at"], j["finished_at"]) for j in jobs]
    return {"workers": workers, "jobs": len(jobs), "rounds": len(jobs) // len(model_ids),
            "seconds": round(span, 3), "per_minute": round(60 * len(jobs) / span, 1),
            "succeeded": statuses.count("succeeded"), "failed": statuses.count("failed"),
            "mean_job_wall_s": round(sum(walls) / len(walls), 3),
            # Worker time outside every job's started_at..finished_at, per job: the claim,
            # the message's round trip, the upkeep after each commit, and any worker left
            # idle at a round's end.
            "between_jobs_s": round((workers * span - sum(walls)) / len(jobs), 3)}
