from __future__ import annotations

import hashlib

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from sqlalchemy.orm import Session

from app.core.auth import current_principal
from app.core.db import get_db
from app.core.guards import INT32_MAX
from app.core.idempotency import Idempotency, fingerprint, idempotency_key
from app.core.openapi import ONE_RESOURCE, UPLOAD, VALIDATED, problems
from app.core.pagination import Page, PageParams, number_page_params, page_of, page_params
from app.core.storage import get_blob_store
from app.datasets import service
from app.datasets.schemas import DatasetOut, SampleOut
from app.tenants.service import Principal

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _file_sha256(upload: UploadFile) -> str:
    digest = hashlib.sha256()
    while chunk := upload.file.read(1 << 20):
        digest.update(chunk)
    upload.file.seek(0)
    return digest.hexdigest()


@router.post("", status_code=201, response_model=DatasetOut, responses=UPLOAD,
             summary="Register the data a model was trained on")
def create_dataset(
    name: str = Form(..., min_length=1, max_length=200),
    file: UploadFile = File(..., description=".npz, or ImageFolder .zip/.tar/.tar.gz"),
    key: str | None = Depends(idempotency_key),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    idem = Idempotency(db, principal.tenant_id, key,
                       fingerprint({"name": name, "file": _file_sha256(file)}))
    if replay := idem.replay():
        return replay
    store = get_blob_store()
    staged = service.stage_upload(store, name, file.filename or "", file.file)
    try:
        dataset = service.insert_dataset(db, principal, staged)
    except BaseException:
        db.rollback()
        staged.discard(store)
        raise
    return idem.commit(201, DatasetOut.of(dataset), f"/v1/datasets/{dataset.id}",
                       on_rollback=lambda: staged.discard(store))


@router.get("", response_model=Page[DatasetOut], responses=VALIDATED)
def list_datasets(name: str | None = Query(None, max_length=200,
                                           description="Only datasets of this name."),
                  page: PageParams = Depends(page_params), db: Session = Depends(get_db),
                  principal: Principal = Depends(current_principal)):
    rows = service.list_datasets(db, principal, page, name)
    return page_of(rows, page, key=lambda d: d.id, convert=DatasetOut.of)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=ONE_RESOURCE)
def get_dataset(dataset_id: str, db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    return DatasetOut.of(service.get_dataset(db, principal, dataset_id))


@router.delete("/{dataset_id}", status_code=204, response_class=Response,
               responses={204: {"description": "Deleted, its blobs erased."},
                          **problems(401, 404, 409, 422)},
               summary="Delete a dataset (no model may use it) and erase its blobs")
def delete_dataset(dataset_id: str, db: Session = Depends(get_db),
                   principal: Principal = Depends(current_principal)):
    dataset = service.get_dataset(db, principal, dataset_id)
    doomed = service.delete_dataset(db, principal, dataset)
    db.commit()
    store = get_blob_store()
    for sha256 in doomed:  # after the commit: a crash leaves an orphan blob, never a row
        store.delete(sha256)
    return Response(status_code=204)


@router.get("/{dataset_id}/samples", response_model=Page[SampleOut], responses=ONE_RESOURCE)
def list_samples(
    dataset_id: str,
    label: int | None = Query(None, ge=0, le=INT32_MAX),
    page: PageParams = Depends(number_page_params),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    dataset = service.get_dataset(db, principal, dataset_id)
    rows = service.list_samples(db, dataset, page, label)
    return page_of(rows, page, key=lambda s: s.row, convert=SampleOut.of)
