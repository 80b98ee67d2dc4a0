"""A model's versions as a lineage: which request made which version, what it forgot, how the
acceptance gate judged it, and whether it was withdrawn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.pagination import PageParams
from app.deletion_requests.tables import DeletionRequest
from app.jobs.tables import Job
from app.models import labels
from app.models.service import list_versions
from app.models.tables import Model, ModelVersion

MAX_VERSIONS = 1000
ACCURACIES = ("forget_accuracy", "retain_accuracy", "test_accuracy")


@dataclass
class VersionView:
    version: ModelVersion
    job: Job | None
    requests: list[DeletionRequest]
    aliases: list[str]
    tags: dict[str, str]
    # Forget, retain and test accuracy in percent; None where not measured.
    accuracy: dict[str, float | None] = field(default_factory=dict)
    measured_by_gate: bool = False  # the registered version: its figures come from its child

    @property
    def gate(self) -> dict[str, Any] | None:
        return (self.version.metrics or {}).get("gate")

    @property
    def method_used(self) -> str | None:
        return (self.version.metrics or {}).get("method")

    @property
    def refused(self) -> list[dict[str, Any]]:
        candidates = (self.version.metrics or {}).get("candidates", [])
        return [c for c in candidates if c.get("verdict") != "passed"]

    @property
    def failed_criteria(self) -> list[dict[str, Any]]:
        return [c for c in (self.gate or {}).get("criteria", []) if not c.get("passed")]


def _percent(value: Any) -> float | None:
    return round(100.0 * value, 2) if isinstance(value, int | float) else None


def lineage(db: Session, model: Model) -> list[VersionView]:
    """Every version, oldest first, with the job and the requests that made it."""
    versions = list_versions(db, model, PageParams(limit=MAX_VERSIONS, after=None))
    versions = versions[:MAX_VERSIONS]
    job_ids = {v.job_id for v in versions if v.job_id}
    jobs = {j.id: j for j in db.scalars(select(Job).where(Job.id.in_(job_ids)))} \
        if job_ids else {}
    requests: dict[str, list[DeletionRequest]] = {}
    if job_ids:
        for request in db.scalars(select(DeletionRequest).where(
                DeletionRequest.job_id.in_(job_ids)).order_by(DeletionRequest.received_at)):
            requests.setdefault(request.job_id, []).append(request)
    tags, aliases = labels.labels_of_versions(db, model, [v.version for v in versions])
    views = [VersionView(v, jobs.get(v.job_id), requests.get(v.job_id, []),
                         aliases[v.version], tags[v.version],
                         {name: _percent((v.metrics or {}).get(name)) for name in ACCURACIES})
             for v in versions]
    _fill_registered_figures(views)
    return views


def _fill_registered_figures(views: list[VersionView]) -> None:
    """A registered version was never evaluated by a job; the gate of the first version made
    from it measured it (as ``base_*``, on that job's forget set), so the plot can start there."""
    by_number = {view.version.version: view for view in views}
    for view in views:
        parent = by_number.get(view.version.parent_version or 0)
        figures = (view.gate or {}).get("figures") or {}
        if parent is None or parent.version.metrics is not None or parent.measured_by_gate:
            continue
        parent.accuracy = {name: figures.get(f"base_{name}") for name in ACCURACIES}
        parent.measured_by_gate = any(v is not None for v in parent.accuracy.values())
