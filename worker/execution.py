"""Running one unlearning job: claim it, unlearn, evaluate, commit the new version exactly once.

Both the Celery task and the in-process worker call :func:`execute_job`. The runner knows
nothing of how jobs are delivered: the jobs a failure schedules anew come back in the
:class:`Execution` for the caller to send.
"""

from __future__ import annotations

import copy
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from safetensors.torch import load_file, save
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from app.audit import service as audit
from app.core.config import get_settings
from app.core.db import in_chunks, new_session, retry_on_conflict, session_scope, utcnow
from app.core.storage import get_blob_store
from app.datasets.tables import Dataset, Sample
from app.deletion_requests.service import settle_requests_of
from app.jobs.tables import SUCCEEDED, Job
from app.models.service import withdraw_superseded
from app.models.tables import ForgottenSample, Model, ModelVersion
from worker import claims
from worker.claims import Claim, Verdict
from worker.engine.architectures import build_model
from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.loader import LazyInputs
from worker.engine.device import describe_hardware, pick_device
from worker.engine.gate import Gate, GateVerdict
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
from worker.model_inputs import inputs_for

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


@dataclass(frozen=True)
class Execution:
    verdict: Verdict  # BUSY: ask again later; DONE: drop the message
    # Jobs scheduled anew for the requests of a failed job: the caller sends them.
    follow_ups: tuple[str, ...] = ()


def execute_job(job_id: str, worker: str) -> Execution:
    """Run the job if this worker may."""
    claim = retry_on_conflict(lambda db: claims.claim(db, job_id, worker))
    if claim.verdict is not Verdict.CLAIMED:
        return Execution(claim.verdict)
    reporter = ProgressReporter(claim)
    reporter.start()
    try:
        return _run(claim, reporter)
    finally:
        reporter.stop()
        release_memory()


def freeze_what_came_before_jobs() -> None:
    """Put what the process held before its first job (modules, settings, pools: some 300k
    objects) out of the collector's reach, once: the full collection after each job then
    scans only what jobs made, milliseconds instead of 0.2 s, which was longer than a small
    job itself. What is frozen is never collected, so this runs before any job's objects
    exist."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


_frozen = False


def release_memory() -> None:
    """Free what the job held (models, activations, cached GPU blocks), so the process can
    take the next message as it was before this one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run(claim: Claim, reporter: ProgressReporter) -> Execution:
    job_id = claim.job_id
    try:
        result = run_claimed(claim, reporter)
        dataset_id = finish(claim, result)
        after_completion(dataset_id)
    except JobCancelled:
        _settle(claim, claims.cancel)
    except LostJob:
        log.warning("job %s was taken over; dropping this run's result", job_id)
    except GateRejected as rejected:
        log.warning("job %s: no candidate passed the acceptance gate: %s", job_id, rejected)
        return _failed(_settle(claim, lambda db, job, why=rejected: reject(db, job, why)))
    except WorkerStopping:
        _settle(claim, lambda db, job: claims.requeue(db, job, "worker stopped",
                                                      refund_attempt=True))
        return Execution(Verdict.BUSY)
    except TRANSIENT_ERRORS as exc:
        log.warning("job %s hit a transient error: %s", job_id, exc)
        reason = f"{type(exc).__name__}: {exc}"
        _settle(claim, lambda db, job: claims.requeue(db, job, reason))
        return Execution(Verdict.BUSY)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        detail = f"{type(exc).__name__}: {exc}"
        return _failed(_settle(claim, lambda db, job: claims.fail(db, job, detail)))
    return Execution(Verdict.DONE)


def _failed(follow_ups: list[str] | None) -> Execution:
    return Execution(Verdict.DONE, tuple(follow_ups or ()))


def reject(db, job: Job, rejected: GateRejected) -> list[str]:
    """Fail the job with a problem that says which criterion failed by how much, per
    candidate; nothing was published and nothing withdrawn."""
    records = [attempt.record() for attempt in rejected.attempts]
    job.metrics = {"candidates": records}
    failures = [{"method": r["method"], "error": r["error"],
                 "failed_criteria": [c for c in (r["gate"] or {}).get("criteria", [])
                                     if not c["passed"]]} for r in records]
    return claims.fail(db, job, f"no candidate passed the acceptance gate: {rejected}",
                       title="Acceptance gate failed", slug="gate-failed", status=422,
                       extra={"candidates": failures})


def _settle(claim: Claim, transition):
    def settle(db):
        job = claims.owned(db, claim)
        return transition(db, job) if job is not None else None

    return retry_on_conflict(settle)


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
    """Decoded arrays and normalised input tensors, cached across jobs on the same dataset.

    Past ``job_resident_dataset_bytes`` of decoded inputs the inputs stay in the blob store:
    ``x_train``/``x_test`` are then :class:`LazyInputs`, which read (and normalise) only the
    rows a method indexes, so a job's memory follows the rows it touches, not the dataset."""
    path = get_blob_store().path(arrays_blob)
    arrays = DatasetArrays.open(path)
    if arrays.x_train.nbytes + arrays.x_test.nbytes > get_settings().job_resident_dataset_bytes:
        return arrays, LazyInputs(arrays, arrays.x_train), LazyInputs(arrays, arrays.x_test)
    arrays = DatasetArrays.load(path)
    return arrays, arrays.inputs(arrays.x_train), arrays.inputs(arrays.x_test)


def build_data(inputs: JobInputs) -> UnlearningData:
    # A text classifier's token ids, or pixels its preprocessor normalises; else the arrays.
    own = inputs_for(inputs.model, inputs.dataset)
    if own is not None:
        x_train, y_train, x_test, y_test, num_classes = own
    else:
        arrays, x_train, x_test = model_inputs(inputs.dataset.arrays_blob)
        y_train, y_test = torch.from_numpy(arrays.y_train), torch.from_numpy(arrays.y_test)
        num_classes = arrays.num_classes
    forget = torch.tensor(sorted(inputs.job.forget_rows), dtype=torch.long)
    excluded = torch.zeros(len(x_train), dtype=torch.bool)
    excluded[forget] = True
    if inputs.previously_forgotten:
        excluded[torch.tensor(inputs.previously_forgotten, dtype=torch.long)] = True
    return UnlearningData(
        x_train=x_train, y_train=y_train, x_test=x_test,
        y_test=y_test, forget_idx=forget,
        retain_idx=torch.nonzero(~excluded).flatten(), num_classes=num_classes,
        forget_classes=inputs.job.forget_classes)


def load_state(inputs: JobInputs, method: str) -> dict[str, torch.Tensor] | None:
    blob = inputs.base.artifacts.get(method)
    return load_file(str(get_blob_store().path(blob))) if blob else None


@dataclass
class Candidate:
    """One entry of the job's chain: its requested method, then each fallback in turn."""

    method: str
    params: dict


@dataclass
class Attempt:
    """What one candidate produced and what the gate made of it."""

    candidate: Candidate
    outcome: UnlearningOutcome | None
    verdict: GateVerdict | None
    seconds: float
    error: str | None = None
    method_seconds: float | None = None  # the method's run, within ``seconds``

    @property
    def gate_seconds(self) -> float | None:
        """The gate's judging of the method's model: the rest of ``seconds``."""
        if self.verdict is None or self.method_seconds is None:
            return None
        return self.seconds - self.method_seconds

    @property
    def accepted(self) -> bool:
        return self.verdict is not None and self.verdict.passed

    def record(self) -> dict:
        return {"method": self.candidate.method, "params": self.candidate.params,
                "seconds": round(self.seconds, 3), "method_seconds": _rounded(self.method_seconds),
                "gate_seconds": _rounded(self.gate_seconds), "error": self.error,
                "verdict": "error" if self.verdict is None else
                ("passed" if self.verdict.passed else "failed"),
                "gate": None if self.verdict is None else self.verdict.as_dict()}


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


class GateRejected(Exception):
    """Every candidate of the chain failed the acceptance gate (or raised)."""

    def __init__(self, attempts: list[Attempt]):
        self.attempts = attempts
        super().__init__("; ".join(_failure_line(a) for a in attempts))


def _failure_line(attempt: Attempt) -> str:
    reason = attempt.error or attempt.verdict.describe_failures()
    return f"{attempt.candidate.method}: {reason}"


def candidates_of(job: Job) -> list[Candidate]:
    fallback = job.fallback
    if fallback is None:  # queued before the gate existed: the service's default chain
        fallback = [{"method": name, "params": {}} for name in get_settings().fallback_methods]
    chain = [Candidate(job.method, job.params)]
    chain += [Candidate(step["method"], step["params"]) for step in fallback]
    return chain


@dataclass
class JobContext:
    """What every candidate of one job works on."""

    inputs: JobInputs
    base: torch.nn.Module
    data: UnlearningData
    device: torch.device
    reporter: ProgressReporter
    gate: Gate
    attempts: list[Attempt] = field(default_factory=list)


def run_claimed(claim: Claim, reporter: ProgressReporter) -> JobResult:
    started = time.perf_counter()
    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    reporter.phase("loading", 0.0)
    inputs = load_inputs(claim)
    device = pick_device()
    base = build_model(inputs.model.architecture, inputs.model.architecture_config)
    base.load_state_dict(load_file(str(get_blob_store().path(inputs.base.sha256))))
    base, data = base.to(device).eval(), build_data(inputs)
    thresholds = get_settings().gate.overridden(inputs.job.gate)
    gate = Gate(base, data, thresholds, device, seed=inputs.job.params.get("seed", 0))
    context = JobContext(inputs, base, data, device, reporter, gate)
    accepted = run_chain(context, claim)
    reporter.phase("evaluating", METHOD_END)
    metrics = evaluate(accepted.outcome.model, context.data, device,
                       seed=accepted.candidate.params.get("seed", 0))
    metrics |= accepted.outcome.metrics
    metrics |= {"method": accepted.candidate.method, "gate": accepted.verdict.as_dict(),
                "candidates": [a.record() for a in context.attempts]}
    metrics["duration_s"] = round(time.perf_counter() - started, 3)
    metrics["hardware"] = describe_hardware(device)
    reporter.check()
    return store_outcome(inputs, accepted, metrics)


def run_chain(context: JobContext, claim: Claim) -> Attempt:
    """Try each candidate until one passes the gate (or, unenforced, the first that ran)."""
    chain = candidates_of(context.inputs.job)
    span = (METHOD_END - LOAD_END) / len(chain)
    for index, candidate in enumerate(chain):
        start = LOAD_END + index * span
        context.reporter.phase(f"candidate {index + 1}/{len(chain)}: {candidate.method}", start)
        attempt = run_candidate(context, candidate, context.reporter.scaled(start, start + span))
        context.attempts.append(attempt)
        record_candidates(claim, context.attempts)
        unenforced = attempt.verdict is not None and not context.gate.thresholds.enforce
        if attempt.accepted or unenforced:
            return attempt
        log.warning("job %s: %s", claim.job_id, _failure_line(attempt))
    raise GateRejected(context.attempts)


def run_candidate(context: JobContext, candidate: Candidate, progress) -> Attempt:
    """Run one method on a fresh copy of the base model and judge the result. A method that
    raises (anything but a transient error or a stop) is a failed candidate, not a failed job."""
    started = time.perf_counter()
    method = METHODS.get(candidate.method)
    params = method.Params.model_validate(candidate.params)
    torch.manual_seed(params.seed)
    inputs = context.inputs
    task = UnlearningTask(
        model=copy.deepcopy(context.base),
        build_fresh=lambda: build_model(inputs.model.architecture,
                                        inputs.model.architecture_config),
        data=context.data, recipe=TrainingRecipe.model_validate(inputs.model.training_config),
        device=context.device, progress=progress, state=load_state(inputs, candidate.method))
    method_seconds = None
    try:
        outcome = method().run(task, params)
        method_seconds = time.perf_counter() - started
        verdict = context.gate.judge(outcome.model, exact=method.exact)
    except (JobCancelled, LostJob, WorkerStopping, *TRANSIENT_ERRORS):
        raise
    except Exception as exc:  # noqa: BLE001 - one method's failure hands over to the next
        log.exception("job %s: %s raised", inputs.job.id, candidate.method)
        return Attempt(candidate, None, None, time.perf_counter() - started,
                       error=f"{type(exc).__name__}: {exc}", method_seconds=method_seconds)
    return Attempt(candidate, outcome, verdict, time.perf_counter() - started,
                   method_seconds=method_seconds)


def record_candidates(claim: Claim, attempts: list[Attempt]) -> None:
    """Show the candidates tried so far on the job while it runs."""
    with session_scope() as db:
        job = claims.owned(db, claim)
        if job is not None:
            job.metrics = {"candidates": [a.record() for a in attempts]}


def store_outcome(inputs: JobInputs, accepted: Attempt, metrics: dict) -> JobResult:
    store = get_blob_store()
    outcome = accepted.outcome
    state_dict = {k: v.detach().cpu().contiguous() for k, v in outcome.model.state_dict().items()}
    checkpoint = store.put_bytes(save(state_dict))
    artifacts = {}
    if outcome.state is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in outcome.state.items()}
        artifacts[accepted.candidate.method] = store.put_bytes(save(state)).sha256
    return JobResult(checkpoint.sha256, checkpoint.size, metrics, artifacts)


def gate_summary(metrics: dict) -> dict:
    """What an auditor needs of the gate at a glance: who made the version, on what verdict
    and figures, and which candidates were refused before it."""
    gate = metrics.get("gate") or {}
    return {"method": metrics.get("method"), "gate_verdict": gate.get("verdict"),
            "gate_exact": gate.get("exact"), "gate_figures": gate.get("figures"),
            "refused_candidates": [c["method"] for c in metrics.get("candidates", [])
                                   if c["verdict"] != "passed"]}


def finish(claim: Claim, result: JobResult) -> str:
    """Commit the new version, in one transaction that only the claim's owner can make.

    Returns the dataset whose samples were forgotten, for the erasure that follows."""
    with session_scope() as db:
        job = claims.owned(db, claim)
        if job is None:
            raise LostJob(claim.job_id)
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
                                             "num_forgotten": len(job.forget_rows),
                                             **gate_summary(result.metrics)})
        audit.record(db, "job.succeeded", "job", job.id, tenant_id=job.tenant_id,
                     actor=job.worker, data={"result_version": version,
                                             "metrics": result.metrics})
    return dataset_id


