"""Running one unlearning job: claim it, unlearn, evaluate, commit the new version exactly once.

Both the Celery task and the in-process worker call :func:`execute_job`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import torch
from safetensors.torch import load_file, save
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from app.audit import service as audit
from app.core.config import get_settings
from app.core.db import in_chunks, lock_row, new_session, session_scope, utcnow
from app.core.storage import get_blob_store
from app.datasets.tables import Dataset, Sample
from app.deletion_requests.service import settle_requests_of
from app.jobs.tables import SUCCEEDED, Job
from app.models.service import withdraw_superseded
from app.models.tables import ForgottenSample, Model, ModelVersion
from worker import claims
from worker.claims import Claim, Verdict
from worker.dispatch import send_job
from worker.engine.architectures import build_model
from worker.engine.data.arrays import DatasetArrays
from worker.engine.device import describe_hardware, pick_device
from worker.engine.methods import (
    METHODS,
    JobCancelled,
    UnlearningData,
    UnlearningOutcome,
    UnlearningTask,
)
from worker.engine.metrics import evaluate
from worker.engine.training import TrainingRecipe
from worker.maintenance import after_completion

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (OperationalError, ConnectionError, TimeoutError, torch.cuda.OutOfMemoryError)
# Share of the job's progress bar each phase takes.
LOAD_END, METHOD_END = 0.05, 0.9


class LostJob(Exception):
    """This run no longer owns the job (another worker took it over)."""


class WorkerStopping(Exception):
    """The process is shutting down: hand the job back to the queue."""


# Set when the process stops; running jobs give their job back at their next step.
stopping = threading.Event()


@dataclass
class JobInputs:
    job: Job
    model: Model
    dataset: Dataset
    base: ModelVersion
    previously_forgotten: list[int]


@dataclass
class JobResult:
    checkpoint_sha256: str
    checkpoint_size: int
    metrics: dict
    artifacts: dict[str, str]


def execute_job(job_id: str, worker: str) -> Verdict:
    """Run the job if this worker may; the verdict tells the caller whether to ask again."""
    with session_scope() as db:
        claim = claims.claim(db, job_id, worker)
    if claim.verdict is not Verdict.CLAIMED:
        return claim.verdict
    reporter = ProgressReporter(claim)
    reporter.start()
    try:
        result = run_claimed(claim, reporter)
        dataset_id = finish(claim, result)
        after_completion(dataset_id)
    except JobCancelled:
        _settle(claim, claims.cancel)
    except LostJob:
        log.warning("job %s was taken over; dropping this run's result", job_id)
    except WorkerStopping:
        _settle(claim, lambda db, job: claims.requeue(db, job, "worker stopped",
                                                      refund_attempt=True))
        return Verdict.BUSY
    except TRANSIENT_ERRORS as exc:
        log.warning("job %s hit a transient error: %s", job_id, exc)
        reason = f"{type(exc).__name__}: {exc}"
        _settle(claim, lambda db, job: claims.requeue(db, job, reason))
        return Verdict.BUSY
    except Exception as exc:
        log.exception("job %s failed", job_id)
        detail = f"{type(exc).__name__}: {exc}"
        for retry_job in _settle(claim, lambda db, job: claims.fail(db, job, detail)) or []:
            send_job(retry_job)
    finally:
        reporter.stop()
    return Verdict.DONE


def _settle(claim: Claim, transition):
    with session_scope() as db:
        job = claims.owned(db, claim)
        return transition(db, job) if job is not None else None


class ProgressReporter:
    """Writes progress and a heartbeat to the job row; raises on cancellation or takeover.

    A background thread keeps the heartbeat alive through long steps that report nothing.
    """

    def __init__(self, claim: Claim):
        self.claim = claim
        self.interval = max(0.2, get_settings().job_lease_seconds / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat-{claim.job_id}")
        self._lock = threading.Lock()
        self._last_write = 0.0
        self.cancelled = False
        self.lost = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()

    def _write(self, progress: float | None = None, phase: str | None = None) -> None:
        with self._lock:
            try:
                with session_scope() as db:
                    owned, cancel = claims.heartbeat(db, self.claim, progress, phase)
            except OperationalError:
                log.warning("heartbeat of job %s failed; retrying", self.claim.job_id)
                return
            self.lost = self.lost or not owned
            self.cancelled = self.cancelled or cancel
            self._last_write = time.monotonic()

    def phase(self, name: str, progress: float) -> None:
        self._write(progress, name)
        self.check()

    def check(self) -> None:
        if stopping.is_set():
            raise WorkerStopping(self.claim.job_id)
        if self.lost:
            raise LostJob(self.claim.job_id)
        if self.cancelled:
            raise JobCancelled(self.claim.job_id)

    def scaled(self, start: float, end: float):
        """A progress callback for one phase, mapped onto ``[start, end]`` of the job."""

        def report(fraction: float) -> None:
            if time.monotonic() - self._last_write >= 0.5:
                self._write(start + (end - start) * min(max(fraction, 0.0), 1.0))
            self.check()

        return report


def load_inputs(claim: Claim) -> JobInputs:
    with new_session() as db:
        job = db.get(Job, claim.job_id)
        model = db.get(Model, job.model_id)
        base = db.scalars(select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == claim.base_version)).one()
        forgotten = list(db.scalars(select(ForgottenSample.row).where(
            ForgottenSample.model_id == model.id)))
        return JobInputs(job, model, db.get(Dataset, model.dataset_id), base, forgotten)


@lru_cache(maxsize=2)
def model_inputs(arrays_blob: str) -> tuple[DatasetArrays, torch.Tensor, torch.Tensor]:
    """Decoded arrays and normalised input tensors, cached across jobs on the same dataset."""
    arrays = DatasetArrays.load(get_blob_store().path(arrays_blob))
    return arrays, arrays.inputs(arrays.x_train), arrays.inputs(arrays.x_test)


def build_data(inputs: JobInputs) -> UnlearningData:
    arrays, x_train, x_test = model_inputs(inputs.dataset.arrays_blob)
    forget = torch.tensor(sorted(inputs.job.forget_rows), dtype=torch.long)
    excluded = torch.zeros(len(x_train), dtype=torch.bool)
    excluded[forget] = True
    if inputs.previously_forgotten:
        excluded[torch.tensor(inputs.previously_forgotten, dtype=torch.long)] = True
    return UnlearningData(
        x_train=x_train, y_train=torch.from_numpy(arrays.y_train), x_test=x_test,
        y_test=torch.from_numpy(arrays.y_test), forget_idx=forget,
        retain_idx=torch.nonzero(~excluded).flatten(), num_classes=arrays.num_classes,
        forget_classes=inputs.job.forget_classes)


def load_state(inputs: JobInputs) -> dict[str, torch.Tensor] | None:
    blob = inputs.base.artifacts.get(inputs.job.method)
    return load_file(str(get_blob_store().path(blob))) if blob else None


def run_claimed(claim: Claim, reporter: ProgressReporter) -> JobResult:
    started = time.perf_counter()
    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    reporter.phase("loading", 0.0)
    inputs = load_inputs(claim)
    device = pick_device()
    model = build_model(inputs.model.architecture, inputs.model.architecture_config)
    model.load_state_dict(load_file(str(get_blob_store().path(inputs.base.sha256))))
    data = build_data(inputs)
    method = METHODS.get(inputs.job.method)
    params = method.Params.model_validate(inputs.job.params)
    torch.manual_seed(params.seed)
    task = UnlearningTask(
        model=model.to(device),
        build_fresh=lambda: build_model(inputs.model.architecture,
                                        inputs.model.architecture_config),
        data=data, recipe=TrainingRecipe.model_validate(inputs.model.training_config),
        device=device, progress=reporter.scaled(LOAD_END, METHOD_END), state=load_state(inputs))
    reporter.phase(inputs.job.method, LOAD_END)
    outcome = method().run(task, params)
    reporter.phase("evaluating", METHOD_END)
    metrics = evaluate(outcome.model, data, device, seed=params.seed)
    metrics |= outcome.metrics
    metrics["duration_s"] = round(time.perf_counter() - started, 3)
    metrics["hardware"] = describe_hardware(device)
    reporter.check()
    return store_outcome(inputs, outcome, metrics)


def store_outcome(inputs: JobInputs, outcome: UnlearningOutcome, metrics: dict) -> JobResult:
    store = get_blob_store()
    state_dict = {k: v.detach().cpu().contiguous() for k, v in outcome.model.state_dict().items()}
    checkpoint = store.put_bytes(save(state_dict))
    artifacts = {}
    if outcome.state is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in outcome.state.items()}
        artifacts[inputs.job.method] = store.put_bytes(save(state)).sha256
    return JobResult(checkpoint.sha256, checkpoint.size, metrics, artifacts)


def finish(claim: Claim, result: JobResult) -> str:
    """Commit the new version, in one transaction that only the claim's owner can make.

    Returns the dataset whose samples were forgotten, for the erasure that follows."""
    with session_scope() as db:
        job = claims.owned(db, claim)
        if job is None:
            raise LostJob(claim.job_id)
        lock_row(db, Model, job.model_id)
        model = db.get(Model, job.model_id, populate_existing=True)
        version = model.latest_version + 1
        dataset_id = model.dataset_id
        sample_ids = [sample_id for rows in in_chunks(job.forget_rows)
                      for sample_id in db.scalars(select(Sample.sample_id).where(
                          Sample.dataset_id == dataset_id, Sample.row.in_(rows)))]
        db.add(ModelVersion(
            model_id=model.id, version=version, parent_version=model.latest_version,
            sha256=result.checkpoint_sha256, size_bytes=result.checkpoint_size, job_id=job.id,
            metrics=result.metrics, forgotten_sample_ids=sorted(sample_ids),
            artifacts=result.artifacts))
        db.add_all([ForgottenSample(model_id=model.id, row=row, job_id=job.id)
                    for row in job.forget_rows])
        for rows in in_chunks(job.forget_rows):
            db.execute(update(Sample).where(Sample.dataset_id == dataset_id,
                                            Sample.row.in_(rows)).values(deleted=True))
        model.latest_version = version
        withdraw_superseded(db, model, version)
        job.status, job.result_version, job.metrics = SUCCEEDED, version, result.metrics
        job.progress, job.phase, job.finished_at = 1.0, "done", utcnow()
        settle_requests_of(db, job)
        audit.record(db, "model_version.created", "model", model.id, tenant_id=job.tenant_id,
                     actor=job.worker, data={"version": version, "job_id": job.id,
                                             "sha256": result.checkpoint_sha256,
                                             "num_forgotten": len(job.forget_rows)})
        audit.record(db, "job.succeeded", "job", job.id, tenant_id=job.tenant_id,
                     actor=job.worker, data={"result_version": version,
                                             "metrics": result.metrics})
    return dataset_id


