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
from app.models.tables import Model, ModelVersion
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


def check_weights(architecture: str, config: dict[str, Any], data: bytes) -> None:
    tensors = parse_weights(data)
    check_against(ARCHITECTURES.get(architecture).build(config), tensors)


def insert_model(db: Session, principal: Principal, *, name: str, architecture: str,
                 config: dict, recipe: dict, dataset: Dataset, weights: StoredBlob) -> Model:
    model = Model(id=new_id("mdl"), tenant_id=principal.tenant_id, name=name,
                  architecture=architecture, architecture_config=config, dataset_id=dataset.id,
                  training_config=recipe, latest_version=1)
    db.add(model)
    db.flush()
    db.add(ModelVersion(model_id=model.id, version=1, parent_version=None,
                        sha256=weights.sha256, size_bytes=weights.size, job_id=None,
                        metrics=None, forgotten_sample_ids=[], artifacts={}))
    audit.record(db, "model.registered", "model", model.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id,
                 data={"architecture": architecture, "dataset_id": dataset.id,
                       "version": 1, "sha256": weights.sha256})
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


def list_models(db: Session, principal: Principal, page: PageParams) -> list[Model]:
    query = select(Model).where(Model.tenant_id == principal.tenant_id)
    if page.after:
        query = query.where(Model.id > page.after)
    return list(db.scalars(query.order_by(Model.id).limit(page.limit + 1)))


def list_versions(db: Session, model: Model, page: PageParams) -> list[ModelVersion]:
    query = select(ModelVersion).where(ModelVersion.model_id == model.id)
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
    """Versions before ``forgetting_version`` still carry what it forgot: withdraw them."""
    now = utcnow()
    withdrawn = list(db.scalars(select(ModelVersion).where(
        ModelVersion.model_id == model.id, ModelVersion.version < forgetting_version,
        ModelVersion.withdrawn_at.is_(None))))
    for version in withdrawn:
        version.withdrawn_at = now
        audit.record(db, "model_version.withdrawn", "model", model.id,
                     tenant_id=model.tenant_id,
                     data={"version": version.version, "superseded_by": forgetting_version})
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
