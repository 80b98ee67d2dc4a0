"""Aliases and tags on models and versions, as MLflow's registry has them.

An alias names one version of a model (``production`` -> 3): a serving system pulls the alias
and never needs to know version numbers. When a version is withdrawn because a newer one forgot
data, every alias on it moves to the newer version in the same transaction (and the audit
trail says so), so an alias never leads to withdrawn weights. ``latest`` is built in: it always
names the newest version and cannot be set.

Tags are free key-value labels on a model or on one version; listings filter on them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import and_, delete, exists, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.db import lock_row, utcnow
from app.core.errors import Problem, invalid, not_found
from app.models.tables import Model, ModelAlias, ModelTag, ModelVersion
from app.tenants.service import Principal

LATEST = "latest"
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$"  # never a number: versions are numbers
TAG_KEY_PATTERN = r"^[A-Za-z0-9_.\- ]{1,100}$"  # no ':' (filters are KEY:VALUE), no '/'

MODEL_TAG = 0  # ModelTag.version of a model's own tags


def _lock(db: Session, model: Model) -> None:
    lock_row(db, Model, model.id)


def get_alias(db: Session, model: Model, alias: str) -> ModelAlias:
    """The alias (``latest`` too, as an unsaved row naming the newest version)."""
    if alias == LATEST:
        newest = db.scalars(select(ModelVersion).where(
            ModelVersion.model_id == model.id,
            ModelVersion.version == model.latest_version)).first()
        return ModelAlias(model_id=model.id, alias=LATEST, version=model.latest_version,
                          updated_at=newest.created_at if newest else model.created_at)
    row = db.get(ModelAlias, (model.id, alias))
    if row is None:
        raise not_found("alias", f"{model.id}@{alias}")
    return row


def resolve_alias(db: Session, model: Model, alias: str) -> int:
    """The version ``alias`` names (``latest``: the newest)."""
    return get_alias(db, model, alias).version


def set_alias(db: Session, principal: Principal, model: Model, alias: str,
              version: int) -> ModelAlias:
    if alias == LATEST:
        raise invalid(f"alias: {LATEST!r} is built in (the newest version) and cannot be set",
                      errors=[{"field": "alias", "message": "reserved"}])
    _lock(db, model)  # one writer per model: serialised with the worker's withdrawals
    target = db.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                   ModelVersion.version == version)).first()
    if target is None:
        raise invalid(f"version: model {model.id} has no version {version}",
                      errors=[{"field": "version", "message": "no such version"}])
    if target.withdrawn_at is not None:
        raise Problem(409, f"version {version} was withdrawn (a later version forgot data it "
                      "still carries); an alias cannot point at it", slug="version-withdrawn")
    row = db.get(ModelAlias, (model.id, alias))
    previous = row.version if row else None
    if row is None:
        row = ModelAlias(model_id=model.id, alias=alias, version=version)
        db.add(row)
    else:
        row.version, row.updated_at = version, utcnow()
    audit.record(db, "model_alias.set", "model", model.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id,
                 data={"alias": alias, "version": version, "previous_version": previous})
    db.flush()
    return row


def delete_alias(db: Session, principal: Principal, model: Model, alias: str) -> None:
    _lock(db, model)
    row = db.get(ModelAlias, (model.id, alias))
    if row is None:
        raise not_found("alias", f"{model.id}@{alias}")
    db.delete(row)
    audit.record(db, "model_alias.deleted", "model", model.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id, data={"alias": alias, "version": row.version})


def list_aliases(db: Session, model: Model) -> list[ModelAlias]:
    return list(db.scalars(select(ModelAlias).where(ModelAlias.model_id == model.id)
                           .order_by(ModelAlias.alias)))


def move_aliases(db: Session, model: Model, withdrawn: Iterable[int], to_version: int) -> list:
    """Move every alias on a withdrawn version to ``to_version`` (the caller withdraws them,
    holding the model's row), each move recorded in the audit trail."""
    withdrawn = sorted(set(withdrawn))
    if not withdrawn:
        return []
    moved = list(db.scalars(select(ModelAlias).where(ModelAlias.model_id == model.id,
                                                     ModelAlias.version.in_(withdrawn))
                            .order_by(ModelAlias.alias)))
    for row in moved:
        audit.record(db, "model_alias.moved", "model", model.id, tenant_id=model.tenant_id,
                     data={"alias": row.alias, "from_version": row.version,
                           "to_version": to_version, "reason": "version withdrawn"})
        row.version, row.updated_at = to_version, utcnow()
    return moved


def set_tag(db: Session, principal: Principal, model: Model, key: str, value: str,
            version: int = MODEL_TAG) -> None:
    _lock(db, model)
    row = db.scalars(select(ModelTag).where(ModelTag.model_id == model.id,
                                            ModelTag.version == version,
                                            ModelTag.key == key)).first()
    if row is None:
        db.add(ModelTag(model_id=model.id, version=version, key=key, value=value))
    else:
        row.value = value
    audit.record(db, "model_tag.set", "model", model.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id,
                 data={"key": key, "value": value, "version": version or None})
    db.flush()


def delete_tag(db: Session, principal: Principal, model: Model, key: str,
               version: int = MODEL_TAG) -> None:
    _lock(db, model)
    gone = db.execute(delete(ModelTag).where(ModelTag.model_id == model.id,
                                             ModelTag.version == version,
                                             ModelTag.key == key)).rowcount
    if not gone:
        raise not_found("tag", key)
    audit.record(db, "model_tag.deleted", "model", model.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id, data={"key": key, "version": version or None})


def check_tags(tags: dict) -> dict[str, str]:
    for key, value in tags.items():
        if not re.fullmatch(TAG_KEY_PATTERN, key):
            raise invalid(f"tags: key {key!r} must match {TAG_KEY_PATTERN}")
        if not isinstance(value, str) or len(value) > 1000:
            raise invalid(f"tags.{key}: a string of at most 1,000 characters")
    return tags


def parse_filters(filters: list[str] | None) -> list[tuple[str, str | None]]:
    """``KEY`` (the tag, any value) or ``KEY:VALUE``."""
    parsed = []
    for text in filters or []:
        key, sep, value = text.partition(":")
        if not key:
            raise invalid(f"tag: {text!r} is not KEY or KEY:VALUE",
                          errors=[{"field": "tag", "message": "KEY or KEY:VALUE"}])
        parsed.append((key, value if sep else None))
    return parsed


def tag_conditions(filters: list[tuple[str, str | None]], model_id, version) -> list:
    """SQL conditions: a tag for each filter on the row whose model and version are given."""
    conditions = []
    for key, value in filters:
        match = [ModelTag.model_id == model_id, ModelTag.version == version,
                 ModelTag.key == key]
        if value is not None:
            match.append(ModelTag.value == value)
        conditions.append(exists(select(ModelTag.id).where(and_(*match))))
    return conditions


def labels_of_models(db: Session, model_ids: list[str]):
    """``(tags, aliases)`` by model id: model tags, and alias -> version."""
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    aliases: dict[str, dict[str, int]] = defaultdict(dict)
    if model_ids:
        for row in db.scalars(select(ModelTag).where(ModelTag.model_id.in_(model_ids),
                                                     ModelTag.version == MODEL_TAG)):
            tags[row.model_id][row.key] = row.value
        for row in db.scalars(select(ModelAlias).where(ModelAlias.model_id.in_(model_ids))
                              .order_by(ModelAlias.alias)):
            aliases[row.model_id][row.alias] = row.version
    return tags, aliases


def labels_of_versions(db: Session, model: Model, versions: list[int]):
    """``(tags, aliases)`` by version number: version tags, and the aliases naming it."""
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    aliases: dict[int, list[str]] = defaultdict(list)
    if versions:
        for row in db.scalars(select(ModelTag).where(ModelTag.model_id == model.id,
                                                     ModelTag.version.in_(versions))):
            tags[row.version][row.key] = row.value
        for row in db.scalars(select(ModelAlias).where(ModelAlias.model_id == model.id,
                                                       ModelAlias.version.in_(versions))
                              .order_by(ModelAlias.alias)):
            aliases[row.version].append(row.alias)
        if model.latest_version in versions:
            aliases[model.latest_version].append(LATEST)
    return tags, aliases
