from __future__ import annotations

import hashlib
from dataclasses import asdict

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from sqlalchemy.orm import Session

from app.core.auth import current_principal
from app.core.db import get_db
from app.core.errors import invalid
from app.core.guards import INT32_MAX
from app.core.idempotency import Idempotency, fingerprint, idempotency_key
from app.core.openapi import ONE_RESOURCE, UPLOAD, VALIDATED, problems
from app.core.pagination import Page, PageParams, number_page_params, page_of, page_params
from app.core.storage import erase_after_commit, get_blob_store
from app.datasets import service
from app.datasets.schemas import DatasetOut, SampleOut
from app.tenants.service import Principal
from worker.engine.data.tables import TableColumns

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _file_sha256(upload: UploadFile) -> str:
    digest = hashlib.sha256()
    while chunk := upload.file.read(1 << 20):
        digest.update(chunk)
    upload.file.seek(0)
    return digest.hexdigest()


COLUMN = {"min_length": 1, "max_length": 200}


def table_columns(
    label_column: str | None = Form(None, **COLUMN, description="Tables: the label column "
                                    "(default `label`); labels are class names, numbered in "
                                    "sorted order."),
    text_column: str | None = Form(None, **COLUMN, description="Tables: the text column (a "
                                   "text dataset)."),
    feature_columns: str | None = Form(None, min_length=1, max_length=100_000,
                                       description="Tables: numeric feature columns, comma "
                                       "separated (default: every column not named "
                                       "otherwise)."),
    id_column: str | None = Form(None, **COLUMN, description="Tables: sample ids (default: "
                                 "the row's number in the file)."),
    subject_column: str | None = Form(None, **COLUMN, description="Tables: the data subject "
                                      "of each row."),
    split_column: str | None = Form(None, **COLUMN, description="Tables: `train` or `test` "
                                    "per row (default: test_fraction of the rows, by id)."),
    test_fraction: float | None = Form(None, gt=0, lt=1, description="Tables without a split "
                                       "column: the share of rows held out (default 0.2)."),
) -> TableColumns | None:
    """What a CSV, JSON Lines or Parquet upload's columns are; None when no field is given."""
    given = {"label": label_column, "text": text_column, "id": id_column,
             "subject": subject_column, "split": split_column}
    if feature_columns is None and test_fraction is None and all(
            v is None for v in given.values()):
        return None
    features = None
    if feature_columns is not None:
        features = tuple(part.strip() for part in feature_columns.split(","))
        if not all(features):
            raise invalid("feature_columns: an empty column name (a stray comma?)")
    return TableColumns(label=label_column or "label", text=text_column, features=features,
                        id=id_column, subject=subject_column, split=split_column,
                        test_fraction=0.2 if test_fraction is None else test_fraction)


@router.post("", status_code=201, response_model=DatasetOut, responses=UPLOAD,
             summary="Register the data a model was trained on")
def create_dataset(
    name: str = Form(..., min_length=1, max_length=200),
    file: UploadFile = File(..., description=".npz, ImageFolder .zip/.tar/.tar.gz, or a "
                            "table: .csv, .jsonl, .parquet"),
    columns: TableColumns | None = Depends(table_columns),
    key: str | None = Depends(idempotency_key),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    idem = Idempotency(db, principal.tenant_id, key,
                       fingerprint({"name": name, "file": _file_sha256(file),
                                    **({"columns": asdict(columns)} if columns else {})}))
    if replay := idem.replay():
        return replay
    store = get_blob_store()
    staged = service.stage_upload(store, name, file.filename or "", file.file, columns)
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
    erase_after_commit(db, get_blob_store(), service.delete_dataset(db, principal, dataset))
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
