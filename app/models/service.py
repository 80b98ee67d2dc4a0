"""Models and their versions: registration of uploaded weights, lookups, checkpoints."""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from app.core.storage import BlobStore, StoredBlob, erase_after_commit, sha256_bytes
from app.datasets.tables import Dataset
from app.models.labels import MODEL_TAG, move_aliases, parse_filters, tag_conditions
from app.models.tables import Model, ModelTag, ModelVersion
from app.models.weights import check_against, parse_weights
from app.tenants.service import Principal
from worker.engine.architectures import ARCHITECTURES
from worker.engine.architectures.huggingface import (
    MAX_PARAMETERS,
    HFConfigError,
    check_label_names,
    meta_model,
)
from worker.engine.data.tokenized import TokenizerError, load_tokenizer
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


def resolve_recipe(config: dict[str, Any], architecture: str | None = None) -> dict[str, Any]:
    """The training recipe ``retrain`` and ``finetune`` reuse: the architecture's defaults
    (transformers' usual recipe for the Hugging Face ones), then the fields given."""
    defaults = {}
    if architecture is not None and architecture in ARCHITECTURES:
        defaults = dict(ARCHITECTURES.get(architecture).default_recipe or {})
    try:
        return TrainingRecipe.model_validate(defaults | config).model_dump(mode="json")
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
    if is_hf(architecture):
        # Names, shapes and dtypes from a model on the meta device: a config is never given
        # real memory before its weights have matched it.
        family = "text" if architecture == HF_TEXT else "image"
        try:
            model = meta_model(config["hf_config"], family)
            count = sum(p.numel() for p in model.parameters())
        except Exception as exc:  # noqa: BLE001 - transformers rejects a config many ways
            raise invalid(f"architecture_config.hf_config: transformers cannot build it "
                          f"({type(exc).__name__}: {exc})") from None
        if count > MAX_PARAMETERS:
            raise invalid(f"architecture_config.hf_config: builds {count:,} parameters; at "
                          f"most {MAX_PARAMETERS:,}")
        check_against(model, tensors)
        return
    check_against(ARCHITECTURES.get(architecture).build(config), tensors)


# --- Hugging Face classifiers: their config, tokenizer and preprocessor files ---------------

HF_IMAGE, HF_TEXT = "hf-image-classifier", "hf-text-classifier"
# config.json, tokenizer_config.json and preprocessor_config.json of real models are a few
# KiB; tokenizer.json a few MiB (bert-base-uncased: 466 KiB, XLM-R: 17 MiB).
MAX_JSON_FILE_BYTES = 256 << 10
MAX_TOKENIZER_BYTES = 32 << 20


def is_hf(architecture: str) -> bool:
    return architecture in (HF_IMAGE, HF_TEXT)


@dataclass
class HFFiles:
    """The files a Hugging Face classifier is registered with, read and size-checked."""

    config: dict[str, Any] | None = None
    tokenizer: bytes | None = None
    tokenizer_config: dict[str, Any] | None = None
    preprocessor: dict[str, Any] | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.config, self.tokenizer, self.tokenizer_config,
                                           self.preprocessor))

    def fingerprint(self) -> dict[str, Any]:
        return {"config": self.config, "tokenizer_config": self.tokenizer_config,
                "preprocessor": self.preprocessor,
                "tokenizer": sha256_bytes(self.tokenizer) if self.tokenizer else None}


def read_capped(field: str, upload, limit: int) -> bytes | None:
    """An optional uploaded file's bytes; 422 past ``limit`` (read no further than that)."""
    if upload is None:
        return None
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise invalid(f"{field}: larger than {limit:,} bytes",
                      errors=[{"field": field, "message": f"at most {limit} bytes"}])
    return data


def read_json_file(field: str, upload) -> dict[str, Any] | None:
    data = read_capped(field, upload, MAX_JSON_FILE_BYTES)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"{field}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise invalid(f"{field}: must be a JSON object")
    return value


def read_hf_files(config, tokenizer, tokenizer_config, preprocessor) -> HFFiles:
    return HFFiles(config=read_json_file("config", config),
                   tokenizer=read_capped("tokenizer", tokenizer, MAX_TOKENIZER_BYTES),
                   tokenizer_config=read_json_file("tokenizer_config", tokenizer_config),
                   preprocessor=read_json_file("preprocessor_config", preprocessor))


def with_hf_files(architecture: str, config: dict[str, Any], files: HFFiles) -> dict[str, Any]:
    """``architecture_config`` with the uploaded files in place: config.json as
    ``hf_config``, the tokenizer by its sha256, its config and the preprocessor's."""
    if not files.given():
        return config
    if not is_hf(architecture):
        raise invalid(f"config, tokenizer, tokenizer_config, preprocessor_config: only for "
                      f"{HF_IMAGE} and {HF_TEXT}, not {architecture!r}")
    out = dict(config)
    if files.config is not None:
        out["hf_config"] = files.config
    if architecture == HF_TEXT:
        if files.preprocessor is not None:
            raise invalid("preprocessor_config: for image classifiers only")
        if files.tokenizer is not None:
            out["tokenizer_sha256"] = sha256_bytes(files.tokenizer)
        elif "tokenizer_sha256" not in out:
            raise invalid("tokenizer: required (the model's tokenizer.json)",
                          errors=[{"field": "tokenizer", "message": "file required"}])
        if files.tokenizer_config is not None:
            out["tokenizer_config"] = files.tokenizer_config
    else:
        if files.tokenizer is not None or files.tokenizer_config is not None:
            raise invalid("tokenizer, tokenizer_config: for text classifiers only")
        if files.preprocessor is not None:
            out["preprocessor"] = files.preprocessor
    return out


def check_hf_model(architecture: str, config: dict[str, Any], dataset: Dataset,
                   files: HFFiles, store: BlobStore) -> None:
    """What a config alone cannot say: label names against the dataset's classes, and for
    text a tokenizer that this service can read and whose ids fit the model's vocabulary."""
    if not is_hf(architecture):
        return
    hf_config = config["hf_config"]
    try:
        check_label_names(hf_config, list(dataset.classes))
    except HFConfigError as exc:
        raise invalid(f"architecture_config.hf_config.{exc}") from None
    if architecture != HF_TEXT:
        return
    tokenizer = files.tokenizer
    if tokenizer is None:
        if not store.exists(config["tokenizer_sha256"]):
            raise invalid("tokenizer: required (the model's tokenizer.json)",
                          errors=[{"field": "tokenizer", "message": "file required"}])
        tokenizer = store.path(config["tokenizer_sha256"]).read_bytes()
    elif sha256_bytes(tokenizer) != config["tokenizer_sha256"]:
        raise invalid("architecture_config.tokenizer_sha256: is not the uploaded tokenizer's")
    try:
        loaded = load_tokenizer(tokenizer, config.get("tokenizer_config"), config["max_length"])
    except TokenizerError as exc:
        raise invalid(str(exc)) from None
    vocab = hf_config.get("vocab_size")
    if isinstance(vocab, int) and loaded.get_vocab_size(with_added_tokens=True) > vocab:
        raise invalid(f"tokenizer: {loaded.get_vocab_size(with_added_tokens=True)} tokens, "
                      f"more than the model's vocab_size {vocab}")


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


def model_blobs(model: Model) -> set[str]:
    """Blobs the model itself holds, beside its versions': a text classifier's tokenizer."""
    tokenizer = (model.architecture_config or {}).get("tokenizer_sha256")
    return {tokenizer} if model.architecture == HF_TEXT and tokenizer else set()


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
    erase_after_commit(db, store, doomed)
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
    blobs: set[str] = model_blobs(model)
    for version in versions:
        if version.purged_at is None:
            blobs |= version_blobs(version)
    still_used: set[str] = set()
    for version in db.scalars(select(ModelVersion).where(ModelVersion.model_id != model.id,
                                                         ModelVersion.purged_at.is_(None))):
        still_used |= version_blobs(version)
    for other in db.scalars(select(Model).where(Model.id != model.id,
                                               Model.architecture == HF_TEXT)):
        still_used |= model_blobs(other)
    doomed = blobs - still_used
    audit.record(db, "model.deleted", "model", model.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id,
                 data={"name": model.name, "versions": len(versions),
                       "blobs_erased": sorted(doomed)})
    db.delete(model)  # the database cascades to versions, jobs, requests, aliases, tags
    return doomed
