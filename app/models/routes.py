from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import current_principal
from app.core.db import get_db
from app.core.errors import Problem, invalid
from app.core.guards import INT32_MAX
from app.core.idempotency import Idempotency, fingerprint, idempotency_key
from app.core.openapi import ONE_RESOURCE, UPLOAD, VALIDATED, problems
from app.core.pagination import Page, PageParams, number_page_params, page_of, page_params
from app.core.storage import erase_after_commit, get_blob_store, sha256_bytes
from app.datasets.service import get_dataset
from app.models import labels, service
from app.models.download import CHECKPOINT_TYPE, CheckpointResponse, checkpoint_response
from app.models.schemas import (
    AliasIn,
    AliasOut,
    ForgottenSampleOut,
    ModelOut,
    TagIn,
    VersionOut,
)
from app.models.weights import recorded_metadata
from app.tenants.service import Principal

router = APIRouter(prefix="/v1/models", tags=["models"])
Version = Annotated[int, Path(ge=1, le=INT32_MAX, description="1 is the version registered.")]


@router.post("", status_code=201, response_model=ModelOut, responses=UPLOAD,
             summary="Register a trained model (architecture + safetensors weights)")
def create_model(
    name: str = Form(..., min_length=1, max_length=200),
    architecture: str | None = Form(None, description="A name from GET /v1/architectures; "
                                    "default: the one `lethe train` recorded in the weights."),
    dataset_id: str = Form(...),
    weights: UploadFile = File(..., description="A .safetensors state dict"),
    architecture_config: str | None = Form(None, description="JSON object; default: the one "
                                           "recorded in the weights (a contradiction is 422)."),
    training_config: str | None = Form(None, description="JSON object: the training recipe "
                                       "`retrain` reuses; default: the one recorded in the "
                                       "weights (a contradiction is 422)."),
    tags: str | None = Form(None, description="JSON object of the model's tags (strings)."),
    config: UploadFile | None = File(None, description="Hugging Face classifiers: the model's "
                                     "config.json (transformers' own model_type; at most "
                                     "256 KiB)."),
    tokenizer: UploadFile | None = File(None, description="hf-text-classifier: its "
                                        "tokenizer.json (at most 32 MiB)."),
    tokenizer_config: UploadFile | None = File(None, description="hf-text-classifier: its "
                                               "tokenizer_config.json, if any."),
    preprocessor_config: UploadFile | None = File(None, description="hf-image-classifier: its "
                                                  "preprocessor_config.json, if any (its "
                                                  "image_mean and image_std normalise inputs)."),
    key: str | None = Depends(idempotency_key),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    data = weights.file.read()
    files = service.read_hf_files(config, tokenizer, tokenizer_config, preprocessor_config)
    form_config = service.parse_json_field("architecture_config", architecture_config)
    recipe_in = service.parse_json_field("training_config", training_config)
    tag_values = labels.check_tags(service.parse_json_field("tags", tags))
    idem = Idempotency(db, principal.tenant_id, key, fingerprint(
        {"name": name, "architecture": architecture, "dataset_id": dataset_id,
         "architecture_config": form_config, "training_config": recipe_in,
         "weights": sha256_bytes(data), "tags": tag_values}
        | ({"files": files.fingerprint()} if files.given() else {})))
    if replay := idem.replay():
        return replay
    dataset = _dataset_field(db, principal, dataset_id)
    # What `lethe train` recorded in the file counts as much as the form: used where the form
    # says nothing, and a form that contradicts it is refused rather than stored.
    recorded = recorded_metadata(data)
    architecture = service.registered_architecture(architecture, recorded)
    given_config = service.with_hf_files(architecture, form_config, files)
    resolved = service.agreed(
        "architecture_config",
        given_config if _given(architecture_config) or files.given() else None,
        recorded.get("architecture_config"),
        lambda value: service.resolve_architecture(architecture, value, dataset))
    recipe = service.agreed("training_config", recipe_in if _given(training_config) else None,
                            recorded.get("training_config"),
                            lambda value: service.resolve_recipe(value, architecture))
    store = get_blob_store()
    service.check_hf_model(architecture, resolved, dataset, files, store)
    service.check_weights(architecture, resolved, data)
    blobs = [store.put_bytes(data)]
    if files.tokenizer is not None:
        blobs.append(store.put_bytes(files.tokenizer))
    try:
        model = service.insert_model(db, principal, name=name, architecture=architecture,
                                     config=resolved, recipe=recipe, dataset=dataset,
                                     weights=blobs[0], tags=tag_values)
    except BaseException:
        db.rollback()
        for blob in blobs:
            service.discard_blob(store, blob)
        raise
    return idem.commit(201, ModelOut.of(model, tag_values), f"/v1/models/{model.id}",
                       on_rollback=lambda: [service.discard_blob(store, b) for b in blobs])


def _given(text: str | None) -> bool:
    return text is not None and bool(text.strip())


def _dataset_field(db: Session, principal: Principal, dataset_id: str):
    try:
        return get_dataset(db, principal, dataset_id)
    except Problem:
        raise invalid(f"dataset_id: no dataset {dataset_id!r}") from None


TagFilter = Query(None, description="KEY (the tag, any value) or KEY:VALUE; repeatable, all "
                                    "must match.")
AliasName = Annotated[str, Path(pattern=labels.ALIAS_PATTERN, description="A name such as "
                                "`production` (`latest`, built in, names the newest version).")]
TagKey = Annotated[str, Path(pattern=labels.TAG_KEY_PATTERN)]


def model_out(db: Session, model) -> ModelOut:
    tags, aliases = labels.labels_of_models(db, [model.id])
    return ModelOut.of(model, tags[model.id], aliases[model.id])


def version_out(db: Session, model, row) -> VersionOut:
    tags, aliases = labels.labels_of_versions(db, model, [row.version])
    return VersionOut.of(row, tags[row.version], aliases[row.version])


@router.get("", response_model=Page[ModelOut], responses=VALIDATED)
def list_models(name: str | None = Query(None, max_length=200,
                                         description="Only models of this name."),
                tag: list[str] | None = TagFilter,
                page: PageParams = Depends(page_params), db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    rows = service.list_models(db, principal, page, name=name, tags=tag)
    tags, aliases = labels.labels_of_models(db, [m.id for m in rows])
    return page_of(rows, page, key=lambda m: m.id,
                   convert=lambda m: ModelOut.of(m, tags[m.id], aliases[m.id]))


@router.get("/{model_id}", response_model=ModelOut, responses=ONE_RESOURCE)
def get_model(model_id: str, db: Session = Depends(get_db),
              principal: Principal = Depends(current_principal)):
    return model_out(db, service.get_model(db, principal, model_id))


@router.delete("/{model_id}", status_code=204, response_class=Response,
               responses={204: {"description": "Deleted, its blobs erased."},
                          **problems(401, 404, 409, 422)},
               summary="Delete a model: its versions, requests and jobs, and its blobs")
def delete_model(model_id: str, db: Session = Depends(get_db),
                 principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    erase_after_commit(db, get_blob_store(), service.delete_model(db, principal, model))
    return Response(status_code=204)


@router.get("/{model_id}/versions", response_model=Page[VersionOut], responses=ONE_RESOURCE)
def list_versions(model_id: str, tag: list[str] | None = TagFilter,
                  page: PageParams = Depends(number_page_params),
                  db: Session = Depends(get_db),
                  principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    rows = service.list_versions(db, model, page, tags=tag)
    tags, aliases = labels.labels_of_versions(db, model, [v.version for v in rows])
    return page_of(rows, page, key=lambda v: v.version,
                   convert=lambda v: VersionOut.of(v, tags[v.version], aliases[v.version]))


@router.get("/{model_id}/versions/{version}", response_model=VersionOut,
            responses=ONE_RESOURCE)
def get_version(model_id: str, version: Version, db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    return version_out(db, model, service.get_version(db, model, version))


@router.get("/{model_id}/versions/{version}/forgotten-samples",
            response_model=Page[ForgottenSampleOut], responses=ONE_RESOURCE,
            summary="The samples the job that made this version forgot, sorted by id")
def list_forgotten_samples(model_id: str, version: Version,
                           page: PageParams = Depends(number_page_params),
                           db: Session = Depends(get_db),
                           principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    ids = service.get_version(db, model, version).forgotten_sample_ids
    start = int(page.after) + 1 if page.after is not None else 0
    rows = list(enumerate(ids[start : start + page.limit + 1], start))
    return page_of(rows, page, key=lambda row: row[0],
                   convert=lambda row: ForgottenSampleOut(id=row[1]))


def _header(description: str) -> dict:
    return {"description": description, "schema": {"type": "string"}}


CHECKPOINT_HEADERS = {
    "ETag": _header('The checkpoint\'s sha256 in quotes: check the bytes against it.'),
    "Accept-Ranges": _header("`bytes`: an interrupted download resumes with Range."),
    "Content-Length": _header("Bytes in this answer."),
}
CHECKPOINT_RESPONSES = {
    200: {"description": "The safetensors checkpoint; ETag is its sha256.",
          "headers": CHECKPOINT_HEADERS},
    206: {"description": "The byte range a Range header asked for.",
          "content": {CHECKPOINT_TYPE: {}},
          "headers": CHECKPOINT_HEADERS | {
              "Content-Range": _header("`bytes FIRST-LAST/TOTAL` of the range sent.")}},
    304: {"description": "If-None-Match named the current ETag.",
          "headers": {"ETag": CHECKPOINT_HEADERS["ETag"]}},
    **problems(401, 404, 410, 416, 422)}
# The conditional and range request headers the download honours (read from the request
# itself, so FastAPI would not list them).
CHECKPOINT_REQUEST_HEADERS = {"parameters": [
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "`bytes=FIRST-`, `bytes=FIRST-LAST` or `bytes=-SUFFIX`: one range; 416 "
                    "when unsatisfiable."},
    {"name": "If-Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "The ETag a resumed download started from: the range is sent only if the "
                    "checkpoint is still that one, else the whole file."},
    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "An ETag already held: 304 when it is the current one."},
]}


@router.get("/{model_id}/versions/{version}/checkpoint", response_class=CheckpointResponse,
            responses=CHECKPOINT_RESPONSES, openapi_extra=CHECKPOINT_REQUEST_HEADERS)
def download_checkpoint(model_id: str, version: Version, request: Request,
                        db: Session = Depends(get_db),
                        principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    return _checkpoint(db, principal, model, version, request)


def _checkpoint(db: Session, principal: Principal, model, version: int, request: Request,
                alias: str | None = None):
    row = service.get_version(db, model, version)
    if row.withdrawn_at is not None:
        raise Problem(410, f"version {version} still carried data that version "
                      f"{model.latest_version} forgot; it was withdrawn at "
                      f"{row.withdrawn_at.isoformat()}", slug="version-withdrawn")
    audit.record(db, "checkpoint.downloaded", "model_version", f"{model.id}/{version}",
                 tenant_id=principal.tenant_id, actor=principal.key_id,
                 data={"sha256": row.sha256, "range": request.headers.get("range"),
                       "alias": alias})
    db.commit()
    response = checkpoint_response(request, get_blob_store(), row.sha256, row.size_bytes,
                                   f"{model.id}-v{version}.safetensors")
    if alias is not None:  # which version the alias led to
        response.headers["Content-Location"] = f"/v1/models/{model.id}/versions/{version}"
    return response


# Aliases --------------------------------------------------------------------------------------

@router.get("/{model_id}/aliases", response_model=list[AliasOut], responses=ONE_RESOURCE,
            summary="The model's aliases (`latest` included)")
def list_aliases(model_id: str, db: Session = Depends(get_db),
                 principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    rows = [labels.get_alias(db, model, labels.LATEST), *labels.list_aliases(db, model)]
    return [AliasOut.of(model.id, a.alias, a.version, a.updated_at) for a in rows]


@router.put("/{model_id}/aliases/{alias}", response_model=AliasOut,
            responses=problems(400, 401, 404, 409, 422),
            summary="Point an alias at a version (moved along when that version is withdrawn)")
def set_alias(model_id: str, alias: AliasName, body: AliasIn, db: Session = Depends(get_db),
              principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    row = labels.set_alias(db, principal, model, alias, body.version)
    out = AliasOut.of(model.id, row.alias, row.version, row.updated_at)
    db.commit()
    return out


@router.get("/{model_id}/aliases/{alias}", response_model=AliasOut, responses=ONE_RESOURCE)
def get_alias(model_id: str, alias: AliasName, db: Session = Depends(get_db),
              principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    row = labels.get_alias(db, model, alias)
    return AliasOut.of(model.id, row.alias, row.version, row.updated_at)


@router.delete("/{model_id}/aliases/{alias}", status_code=204, response_class=Response,
               responses={204: {"description": "The alias is gone."}, **ONE_RESOURCE})
def delete_alias(model_id: str, alias: AliasName, db: Session = Depends(get_db),
                 principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    labels.delete_alias(db, principal, model, alias)
    db.commit()
    return Response(status_code=204)


@router.get("/{model_id}/aliases/{alias}/checkpoint", response_class=CheckpointResponse,
            responses=CHECKPOINT_RESPONSES, openapi_extra=CHECKPOINT_REQUEST_HEADERS,
            summary="The checkpoint of the version the alias names now")
def download_alias_checkpoint(model_id: str, alias: AliasName, request: Request,
                              db: Session = Depends(get_db),
                              principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    return _checkpoint(db, principal, model, labels.resolve_alias(db, model, alias), request,
                       alias=alias)


# Tags -----------------------------------------------------------------------------------------

@router.put("/{model_id}/tags/{key}", response_model=ModelOut,
            responses=problems(400, 401, 404, 422), summary="Set a tag on the model")
def set_model_tag(model_id: str, key: TagKey, body: TagIn, db: Session = Depends(get_db),
                  principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    labels.set_tag(db, principal, model, key, body.value)
    db.commit()
    return model_out(db, model)


@router.delete("/{model_id}/tags/{key}", status_code=204, response_class=Response,
               responses={204: {"description": "The tag is gone."}, **ONE_RESOURCE})
def delete_model_tag(model_id: str, key: TagKey, db: Session = Depends(get_db),
                     principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    labels.delete_tag(db, principal, model, key)
    db.commit()
    return Response(status_code=204)


@router.put("/{model_id}/versions/{version}/tags/{key}", response_model=VersionOut,
            responses=problems(400, 401, 404, 422), summary="Set a tag on a version")
def set_version_tag(model_id: str, version: Version, key: TagKey, body: TagIn,
                    db: Session = Depends(get_db),
                    principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    row = service.get_version(db, model, version)
    labels.set_tag(db, principal, model, key, body.value, version=version)
    db.commit()
    return version_out(db, model, row)


@router.delete("/{model_id}/versions/{version}/tags/{key}", status_code=204,
               response_class=Response,
               responses={204: {"description": "The tag is gone."}, **ONE_RESOURCE})
def delete_version_tag(model_id: str, version: Version, key: TagKey,
                       db: Session = Depends(get_db),
                       principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    service.get_version(db, model, version)
    labels.delete_tag(db, principal, model, key, version=version)
    db.commit()
    return Response(status_code=204)
