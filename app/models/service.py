"""Models and their versions: registration of uploaded weights, lookups, checkpoints."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.config import get_settings
from app.core.db import utcnow
from app.core.errors import Problem, invalid, not_found
from app.core.ids import new_id
from app.core.pagination import PageParams
from app.core.storage import BlobStore, StoredBlob
from app.datasets.tables import Dataset
from app.models.labels import MODEL_TAG, move_aliases, parse_filters, tag_conditions
from app.models.tables import Model, ModelTag, ModelVersion
from app.models.weights import check_against, parse_weights
from app.tenants.service import Principal
from worker.engine.architectures import ARCHITECTURES
from worker.engine.registry import UnknownEntryError
from worker.engine.training import TrainingRecipe


def parse_json_field(field: str, text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(f"{field}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise invalid(f"{field}: must be a JSON object")
    return value


def validation_problem(field: str, exc: ValidationError) -> Problem:
    errors = [{"field": ".".join([field, *map(str, e["loc"])]), "message": e["msg"]}
              for e in exc.errors()]
    return invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


def resolve_architecture(name: str, config: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    """The validated config, with classes and input shape defaulting to the dataset's."""
    try:
        arch = ARCHITECTURES.get(name)
    except UnknownEntryError as exc:
        raise invalid(f"architecture: {exc}") from None
    config = {"num_classes": dataset.num_classes, "input_shape": dataset.input_shape} | config
    try:
        validated = arch.config_model.model_validate(config)
    except ValidationError as exc:
        raise validation_problem("architecture_config", exc) from None
    if validated.num_classes != dataset.num_classes:
        raise invalid(f"architecture_config.num_classes: {validated.num_classes} != the "
                      f"dataset's {dataset.num_classes} classes")
    if list(validated.input_shape) != list(dataset.input_shape):
        raise invalid(f"architecture_config.input_shape: {list(validated.input_shape)} != the "
                      f"dataset's {dataset.input_shape}")
    return validated.model_dump(mode="json")


def resolve_recipe(config: dict[str, Any]) -> dict[str, Any]:
    try:
        return TrainingRecipe.model_validate(config).model_dump(mode="json")
    except ValidationError as exc:
        raise validation_problem("training_config", exc) from None


RECORDED = "as `lethe train` recorded it in the weights' metadata"


def registered_architecture(given: str | None, recorded: dict[str, Any]) -> str:
    """The request's architecture, else the one the weights record; never two that differ."""
    noted = recorded.get("architecture")
    if given and noted and given != noted:
        raise invalid(f"architecture: {given!r} contradicts {noted!r}, {RECORDED}",
                      errors=[{"field": "architecture",
                               "message": f"the weights record {noted!r}"}])
    if not (given or noted):
        raise invalid("architecture: required (the weights record none)",
                      errors=[{"field": "architecture", "message": "field required"}])
    return given or noted


def agreed(field: str, given: dict[str, Any] | None, noted: dict[str, Any] | None,
           resolve) -> dict[str, Any]:
    """``given`` (a request's field) resolved, else what the weights record resolved; a 422
    naming every key where the two differ once both are resolved (defaults filled in)."""
    if noted is None:
        return resolve(given or {})
    try:
        from_weights = resolve(noted)
    except Problem as exc:
        raise invalid(f"{exc.detail} ({RECORDED})") from None
    if given is None:
        return from_weights
    from_request = resolve(given)
    differ = sorted(k for k in from_request.keys() | from_weights.keys()
                    if from_request.get(k) != from_weights.get(k))
    if differ:
        shown = "; ".join(f"{k}: {from_request.get(k)!r} != {from_weights.get(k)!r}"
                          for k in differ)
        raise invalid(f"{field}: contradicts the one {RECORDED}: {shown}",
                      errors=[{"field": f"{field}.{k}",
                               "message": f"the weights record {from_weights.get(k)!r}"}
                              for k in differ])
    return from_request


def check_weights(architecture: str, config: dict[str, Any], data: bytes) -> None:
    tensors = parse_weights(data)
    check_against(ARCHITECTURES.get(architecture).build(config), tensors)


def insert_model(db: Session, principal: Principal, *, name: str, architecture: str,
                 config: dict, recipe: dict, dataset: Dataset, weights: StoredBlob,
                 tags: dict[str, str] | None = None) -> Model:
    model = Model(id=new_id("mdl"), tenant_id=principal.tenant_id, name=name,
                  architecture=architecture, architecture_config=config, dataset_id=dataset.id,
                  training_config=recipe, latest_version=1)
    db.add(model)
    db.flush()
    db.add(ModelVersion(model_id=model.id, version=1, parent_version=None,
                        sha256=weights.sha256, size_bytes=weights.size, job_id=None,
                        metrics=None, forgotten_sample_ids=[], artifacts={}))
    db.add_all([ModelTag(model_id=model.id, version=0, key=key, value=value)
                for key, value in (tags or {}).items()])
    audit.record(db, "model.registered", "model", model.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id,
                 data={"architecture": architecture, "dataset_id": dataset.id,
                       "version": 1, "sha256": weights.sha256, "tags": tags or {}})
    db.flush()
    return model


def discard_blob(store: BlobStore, blob: StoredBlob) -> None:
    if blob.created:
        store.delete(blob.sha256)


def get_model(db: Session, principal: Principal, model_id: str) -> Model:
    model = db.get(Model, model_id)
    if model is None or model.tenant_id != principal.tenant_id:
        raise not_found("model", model_id)
    return model


def list_models(db: Session, principal: Principal, page: PageParams, *,
                name: str | None = None, tags: list[str] | None = None) -> list[Model]:
    query = select(Model).where(Model.tenant_id == principal.tenant_id)
    if name is not None:
        query = query.where(Model.name == name)
    for condition in tag_conditions(parse_filters(tags), Model.id, MODEL_TAG):
        query = query.where(condition)
    if page.after:
        query = query.where(Model.id > page.after)
    return list(db.scalars(query.order_by(Model.id).limit(page.limit + 1)))


def list_versions(db: Session, model: Model, page: PageParams,
                  tags: list[str] | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).where(ModelVersion.model_id == model.id)
    for condition in tag_conditions(parse_filters(tags), model.id, ModelVersion.version):
        query = query.where(condition)
    if page.after:
        try:
            query = query.where(ModelVersion.version > int(page.after))
        except ValueError:
            raise invalid("cursor: not a cursor this service issued") from None
    return list(db.scalars(query.order_by(ModelVersion.version).limit(page.limit + 1)))


def get_version(db: Session, model: Model, version: int) -> ModelVersion:
    row = db.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                ModelVersion.version == version)).first()
    if row is None:
        raise not_found("version", f"{model.id}/{version}")
    return row


def withdraw_superseded(db: Session, model: Model, forgetting_version: int) -> list[int]:
    """Versions before ``forgetting_version`` still carry what it forgot: withdraw them, and
    move their aliases to ``forgetting_version`` so that no alias leads to withdrawn weights.

    The caller holds the model's row (the worker's ``finish``), which alias changes take too:
    an alias set concurrently either lands before (and is moved here) or sees the withdrawal."""
    now = utcnow()
    withdrawn = list(db.scalars(select(ModelVersion).where(
        ModelVersion.model_id == model.id, ModelVersion.version < forgetting_version,
        ModelVersion.withdrawn_at.is_(None))))
    for version in withdrawn:
        version.withdrawn_at = now
        audit.record(db, "model_version.withdrawn", "model", model.id,
                     tenant_id=model.tenant_id,
                     data={"version": version.version, "superseded_by": forgetting_version})
    move_aliases(db, model, [v.version for v in withdrawn], forgetting_version)
    return [v.version for v in withdrawn]


def version_blobs(version: ModelVersion) -> set[str]:
    return {version.sha256, *version.artifacts.values()}


def purge_withdrawn(db: Session, store: BlobStore) -> int:
    """Delete the blobs of versions withdrawn longer than the grace period ago."""
    cutoff = utcnow() - timedelta(seconds=get_settings().version_grace_seconds)
    due = list(db.scalars(select(ModelVersion).where(
        ModelVersion.withdrawn_at <= cutoff, ModelVersion.purged_at.is_(None))))
    if not due:
        return 0
    still_used = set()
    for version in db.scalars(select(ModelVersion).where(ModelVersion.purged_at.is_(None),
                                                         ModelVersion.withdrawn_at.is_(None))):
        still_used |= version_blobs(version)
    doomed: set[str] = set()
    for version in due:
        version.purged_at = utcnow()
        doomed |= version_blobs(version) - still_used
        audit.record(db, "model_version.purged", "model", version.model_id,
                     tenant_id=db.get(Model, version.model_id).tenant_id,
                     data={"version": version.version, "sha256": version.sha256})
    db.commit()
    for sha256 in doomed:  # after the commit: a crash leaves an orphan blob, never a dangling row
        store.delete(sha256)
    return len(due)


def delete_model(db: Session, principal: Principal, model: Model) -> set[str]:
    """Delete the model, its versions, jobs, requests, aliases and tags; returns the blobs
    (checkpoints, method state) no other model's live version uses, for the caller to erase
    once this commits. Refused while one of its jobs is queued or running."""
    from app.core.db import lock_row
    from app.jobs.tables import QUEUED, RUNNING, Job

    lock_row(db, Model, model.id)
    busy = sorted(db.scalars(select(Job.id).where(Job.model_id == model.id,
                                                  Job.status.in_((QUEUED, RUNNING)))))
    if busy:
        raise Problem(409, f"model {model.id!r} has {len(busy)} queued or running job(s) "
                      f"({', '.join(busy[:5])}); cancel them or wait for them to finish",
                      slug="model-busy", jobs=busy)
    versions = list(db.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)))
    blobs: set[str] = set()
    for version in versions:
        if version.purged_at is None:
            blobs |= version_blobs(version)
    still_used: set[str] = set()
    for version in db.scalars(select(ModelVersion).where(ModelVersion.model_id != model.id,
                                                         ModelVersion.purged_at.is_(None))):
        still_used |= version_blobs(version)
    doomed = blobs - still_used
    audit.record(db, "model.deleted", "model", model.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id,
                 data={"name": model.name, "versions": len(versions),
                       "blobs_erased": sorted(doomed)})
    db.delete(model)  # the database cascades to versions, jobs, requests, aliases, tags
    return doomed
