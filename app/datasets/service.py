"""Datasets: decode an upload once, keep the file and its arrays as blobs, index the samples."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.config import get_settings
from app.core.errors import invalid, not_found
from app.core.ids import new_id
from app.core.pagination import PageParams
from app.core.storage import BlobStore, StoredBlob
from app.datasets.tables import Dataset, Sample
from app.tenants.service import Principal
from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.formats import (
    TABLE_FORMATS,
    ArchiveLimits,
    DatasetFormatError,
    TableColumns,
    TextDataset,
    dataset_format,
    load_dataset_file,
)

INSERT_CHUNK = 20_000  # sample rows per INSERT


@dataclass
class StagedDataset:
    """An upload that passed every check, its blobs written, its rows not yet inserted."""

    name: str
    format: str
    upload: StoredBlob
    arrays_blob: StoredBlob
    arrays: DatasetArrays | TextDataset  # what the rows are made of (texts stay in the blob)

    def discard(self, store: BlobStore) -> None:
        for blob in (self.upload, self.arrays_blob):
            if blob.created:
                store.delete(blob.sha256)


def archive_limits() -> ArchiveLimits:
    """The configured limits, and the text bounds of the columns an upload's rows go to (so a
    too-long id fails before decoding, not at the insert)."""
    s = get_settings()
    return ArchiveLimits(max_members=s.max_archive_members, max_bytes=s.max_archive_bytes,
                         max_ratio=s.max_compression_ratio, max_image_pixels=s.max_image_pixels,
                         max_decoded_bytes=s.max_decoded_bytes,
                         max_id_chars=Sample.__table__.c.sample_id.type.length,
                         max_subject_chars=Sample.__table__.c.subject.type.length,
                         max_rows=s.max_dataset_rows, max_text_chars=s.max_text_chars,
                         max_row_bytes=s.max_row_bytes, max_classes=s.max_classes)


def stage_upload(store: BlobStore, name: str, filename: str, source: BinaryIO,
                 columns: TableColumns | None = None) -> StagedDataset:
    """Check and decode the upload; raise a 422 problem (leaving nothing behind) if it is bad.
    ``columns`` says what a table's columns are (CSV, JSON Lines, Parquet only)."""
    try:
        fmt = dataset_format(filename)
    except DatasetFormatError as exc:
        raise invalid(f"file: {exc}") from None
    if columns is not None and fmt not in TABLE_FORMATS:
        raise invalid(f"file: column fields apply to {', '.join(TABLE_FORMATS)} uploads, "
                      f"not {fmt}")
    s = get_settings()
    if fmt in TABLE_FORMATS:  # the file is the content: cap it before a byte is kept
        size = _remaining_bytes(source)
        if size is not None and size > s.max_archive_bytes:
            raise invalid(f"file: {size} bytes, more than {s.max_archive_bytes}")
    raw = store.temp_path(suffix=Path(filename).suffix)
    decoded = None
    try:
        with open(raw, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        try:
            arrays = load_dataset_file(raw, filename, archive_limits(), store.staging_dir,
                                       columns)
        except DatasetFormatError as exc:
            located = {key: value for key, value in (("column", exc.column), ("row", exc.row))
                       if value is not None}
            raise invalid(f"file: {exc}", **located) from None
        decoded = store.temp_path(suffix=".safetensors")
        try:
            arrays.save(decoded)
        finally:
            if isinstance(arrays, TextDataset):
                arrays.close()  # the texts are in the decoded file now
        upload_blob = store.put_file(raw, move=True)
        try:
            arrays_blob = store.put_file(decoded, move=True)
        except BaseException:
            if upload_blob.created:  # no half-stored dataset either
                store.delete(upload_blob.sha256)
            raise
    finally:  # on every path; a killed process's staging is swept at the next start
        raw.unlink(missing_ok=True)
        if decoded is not None:
            decoded.unlink(missing_ok=True)
    return StagedDataset(name, fmt, upload_blob, arrays_blob, arrays)


def _remaining_bytes(source: BinaryIO) -> int | None:
    """How many bytes ``source`` holds from where it stands, when it can tell (a spooled
    upload can)."""
    try:
        here = source.tell()
        end = source.seek(0, 2)
        source.seek(here)
    except (OSError, AttributeError, ValueError):
        return None
    return end - here


def insert_dataset(db: Session, principal: Principal, staged: StagedDataset) -> Dataset:
    arrays = staged.arrays
    dataset = Dataset(
        id=new_id("ds"), tenant_id=principal.tenant_id, name=staged.name, format=staged.format,
        sha256=staged.upload.sha256, upload_blob=staged.upload.sha256,
        arrays_blob=staged.arrays_blob.sha256, size_bytes=staged.upload.size,
        num_classes=arrays.num_classes, classes=arrays.classes,
        input_shape=list(arrays.input_shape), num_train=len(arrays.y_train),
        num_test=len(arrays.y_test),
    )
    db.add(dataset)
    db.flush()
    subjects = arrays.subjects_train or [None] * len(arrays.ids_train)
    labels = arrays.y_train.tolist()
    # In chunks: a table may have a million rows, and a million dicts at once is ~0.5 GB.
    for start in range(0, len(labels), INSERT_CHUNK):
        end = start + INSERT_CHUNK
        db.execute(insert(Sample), [
            {"dataset_id": dataset.id, "row": start + i, "sample_id": sid, "label": label,
             "subject": subject, "deleted": False}
            for i, (sid, label, subject) in enumerate(zip(
                arrays.ids_train[start:end], labels[start:end], subjects[start:end],
                strict=True))])
    audit.record(db, "dataset.uploaded", "dataset", dataset.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id,
                 data={"sha256": dataset.sha256, "name": dataset.name,
                       "num_train": dataset.num_train, "num_test": dataset.num_test})
    return dataset


def get_dataset(db: Session, principal: Principal, dataset_id: str) -> Dataset:
    dataset = db.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant_id != principal.tenant_id:
        raise not_found("dataset", dataset_id)
    return dataset


def list_datasets(db: Session, principal: Principal, page: PageParams,
                  name: str | None = None) -> list[Dataset]:
    query = select(Dataset).where(Dataset.tenant_id == principal.tenant_id)
    if name is not None:
        query = query.where(Dataset.name == name)
    if page.after:
        query = query.where(Dataset.id > page.after)
    return list(db.scalars(query.order_by(Dataset.id).limit(page.limit + 1)))


def list_samples(db: Session, dataset: Dataset, page: PageParams,
                 label: int | None) -> list[Sample]:
    query = select(Sample).where(Sample.dataset_id == dataset.id)
    if label is not None:
        query = query.where(Sample.label == label)
    if page.after:
        try:
            query = query.where(Sample.row > int(page.after))
        except ValueError:
            raise invalid("cursor: not a cursor this service issued") from None
    return list(db.scalars(query.order_by(Sample.row).limit(page.limit + 1)))




def delete_dataset(db: Session, principal: Principal, dataset: Dataset) -> set[str]:
    """Delete the dataset and its samples; returns the blobs (the upload and its decoded
    arrays) no other dataset uses, for the caller to erase once this commits. Refused while
    a model trained on it exists (delete those first: they would lose their data)."""
    from sqlalchemy import or_

    from app.core.db import lock_row
    from app.core.errors import Problem
    from app.models.tables import Model

    lock_row(db, Dataset, dataset.id)
    models = sorted(db.scalars(select(Model.id).where(Model.dataset_id == dataset.id)))
    if models:
        raise Problem(409, f"dataset {dataset.id!r} is what {len(models)} model(s) were "
                      f"trained on ({', '.join(models[:5])}); delete them first",
                      slug="dataset-in-use", models=models)
    blobs = {dataset.upload_blob, dataset.arrays_blob}
    shared = set(db.scalars(select(Dataset.upload_blob).where(
        Dataset.id != dataset.id, or_(Dataset.upload_blob.in_(blobs),
                                      Dataset.arrays_blob.in_(blobs)))))
    shared |= set(db.scalars(select(Dataset.arrays_blob).where(
        Dataset.id != dataset.id, or_(Dataset.upload_blob.in_(blobs),
                                      Dataset.arrays_blob.in_(blobs)))))
    doomed = blobs - shared
    audit.record(db, "dataset.deleted", "dataset", dataset.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id,
                 data={"name": dataset.name, "sha256": dataset.sha256,
                       "blobs_erased": sorted(doomed)})
    db.delete(dataset)  # the database cascades to the samples
    return doomed
