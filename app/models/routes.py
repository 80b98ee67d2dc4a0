from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Request, UploadFile
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import current_principal
from app.core.db import get_db
from app.core.errors import Problem, invalid
from app.core.guards import INT32_MAX
from app.core.idempotency import Idempotency, fingerprint, idempotency_key
from app.core.openapi import ONE_RESOURCE, UPLOAD, VALIDATED, problems
from app.core.pagination import Page, PageParams, number_page_params, page_of, page_params
from app.core.storage import get_blob_store, sha256_bytes
from app.datasets.service import get_dataset
from app.models import service
from app.models.download import CHECKPOINT_TYPE, CheckpointResponse, checkpoint_response
from app.models.schemas import ModelOut, VersionOut
from app.tenants.service import Principal

router = APIRouter(prefix="/v1/models", tags=["models"])
Version = Annotated[int, Path(ge=1, le=INT32_MAX, description="1 is the version registered.")]


@router.post("", status_code=201, response_model=ModelOut, responses=UPLOAD,
             summary="Register a trained model (architecture + safetensors weights)")
def create_model(
    name: str = Form(..., min_length=1, max_length=200),
    architecture: str = Form(...),
    dataset_id: str = Form(...),
    weights: UploadFile = File(..., description="A .safetensors state dict"),
    architecture_config: str | None = Form(None, description="JSON object"),
    training_config: str | None = Form(None, description="JSON object: the training recipe"),
    key: str | None = Depends(idempotency_key),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    data = weights.file.read()
    config = service.parse_json_field("architecture_config", architecture_config)
    recipe_in = service.parse_json_field("training_config", training_config)
    idem = Idempotency(db, principal.tenant_id, key, fingerprint(
        {"name": name, "architecture": architecture, "dataset_id": dataset_id,
         "architecture_config": config, "training_config": recipe_in,
         "weights": sha256_bytes(data)}))
    if replay := idem.replay():
        return replay
    dataset = _dataset_field(db, principal, dataset_id)
    config = service.resolve_architecture(architecture, config, dataset)
    recipe = service.resolve_recipe(recipe_in)
    service.check_weights(architecture, config, data)
    store = get_blob_store()
    blob = store.put_bytes(data)
    try:
        model = service.insert_model(db, principal, name=name, architecture=architecture,
                                     config=config, recipe=recipe, dataset=dataset, weights=blob)
    except BaseException:
        db.rollback()
        service.discard_blob(store, blob)
        raise
    return idem.commit(201, ModelOut.of(model), f"/v1/models/{model.id}",
                       on_rollback=lambda: service.discard_blob(store, blob))


def _dataset_field(db: Session, principal: Principal, dataset_id: str):
    try:
        return get_dataset(db, principal, dataset_id)
    except Problem:
        raise invalid(f"dataset_id: no dataset {dataset_id!r}") from None


@router.get("", response_model=Page[ModelOut], responses=VALIDATED)
def list_models(page: PageParams = Depends(page_params), db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    rows = service.list_models(db, principal, page)
    return page_of(rows, page, key=lambda m: m.id, convert=ModelOut.of)


@router.get("/{model_id}", response_model=ModelOut, responses=ONE_RESOURCE)
def get_model(model_id: str, db: Session = Depends(get_db),
              principal: Principal = Depends(current_principal)):
    return ModelOut.of(service.get_model(db, principal, model_id))


@router.get("/{model_id}/versions", response_model=Page[VersionOut], responses=ONE_RESOURCE)
def list_versions(model_id: str, page: PageParams = Depends(number_page_params),
                  db: Session = Depends(get_db),
                  principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    rows = service.list_versions(db, model, page)
    return page_of(rows, page, key=lambda v: v.version, convert=VersionOut.of)


@router.get("/{model_id}/versions/{version}", response_model=VersionOut,
            responses=ONE_RESOURCE)
def get_version(model_id: str, version: Version, db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    return VersionOut.of(service.get_version(db, model, version))


@router.get("/{model_id}/versions/{version}/checkpoint", response_class=CheckpointResponse,
            responses={200: {"description": "The safetensors checkpoint; ETag is its sha256."},
                       206: {"description": "The byte range a Range header asked for.",
                             "content": {CHECKPOINT_TYPE: {}}},
                       304: {"description": "If-None-Match named the current ETag."},
                       **problems(401, 404, 410, 416, 422)})
def download_checkpoint(model_id: str, version: Version, request: Request,
                        db: Session = Depends(get_db),
                        principal: Principal = Depends(current_principal)):
    model = service.get_model(db, principal, model_id)
    row = service.get_version(db, model, version)
    if row.withdrawn_at is not None:
        raise Problem(410, f"version {version} still carried data that version "
                      f"{model.latest_version} forgot; it was withdrawn at "
                      f"{row.withdrawn_at.isoformat()}", slug="version-withdrawn")
    audit.record(db, "checkpoint.downloaded", "model_version", f"{model.id}/{version}",
                 tenant_id=principal.tenant_id, actor=principal.key_id,
                 data={"sha256": row.sha256, "range": request.headers.get("range")})
    db.commit()
    return checkpoint_response(request, get_blob_store(), row.sha256, row.size_bytes,
                               f"{model.id}-v{version}.safetensors")
