"""Real erasure: once every model on a dataset has forgotten a sample, its bytes leave the store.

The stored upload is rewritten without the samples, the decoded arrays get their rows zeroed
(row numbers stay stable for the samples that remain), and the old blobs are deleted. Ids,
labels and hashes stay: they are the evidence of what was erased.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.db import in_chunks, lock_row, new_session, session_scope
from app.core.storage import BlobStore, get_blob_store
from app.datasets.tables import Dataset, Sample
from app.models.tables import ForgottenSample, Model
from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.loader import ZeroedRows
from worker.engine.data.rewrite import rewrite_without
from worker.engine.data.text import TextRows, erase_text_rows, is_text_dataset

log = logging.getLogger(__name__)


def erasable_rows(db: Session, dataset: Dataset) -> dict[int, str]:
    """Rows not yet erased that every model trained on the dataset has forgotten."""
    models = select(Model.id).where(Model.dataset_id == dataset.id)
    num_models = db.scalar(select(func.count()).select_from(models.subquery()))
    forgotten_by_all = (select(ForgottenSample.row)
                        .where(ForgottenSample.model_id.in_(models))
                        .group_by(ForgottenSample.row)
                        .having(func.count() == num_models))
    return dict(db.execute(select(Sample.row, Sample.sample_id).where(
        Sample.dataset_id == dataset.id, Sample.erased.is_(False),
        Sample.row.in_(forgotten_by_all))).all())


def _rewrite_blobs(store: BlobStore, dataset: Dataset, rows: dict[int, str]):
    upload, decoded = store.temp_path(), store.temp_path()
    try:
        arrays_path = store.path(dataset.arrays_blob)
        if is_text_dataset(arrays_path):  # texts emptied, row numbers kept
            with TextRows.open(arrays_path) as text:
                table = text.table
            erase_text_rows(arrays_path, rows, decoded, spill_dir=store.staging_dir)
            rewrite_without(store.path(dataset.upload_blob), dataset.format,
                            set(rows.values()), upload, table)
            return store.put_file(upload, move=True), store.put_file(decoded, move=True)
        # Rows are read, zeroed and written a block at a time: never the whole dataset.
        arrays = DatasetArrays.open(arrays_path)
        rewrite_without(store.path(dataset.upload_blob), dataset.format, set(rows.values()),
                        upload, arrays.table)
        arrays.x_train = ZeroedRows(arrays.x_train, rows)
        arrays.ids_train = list(arrays.ids_train)
        if arrays.subjects_train:
            arrays.subjects_train = list(arrays.subjects_train)
            for row in rows:
                arrays.subjects_train[row] = None
        arrays.save(decoded)
        return store.put_file(upload, move=True), store.put_file(decoded, move=True)
    finally:  # moved into place already, unless a step failed: no copy of the data stays
        upload.unlink(missing_ok=True)
        decoded.unlink(missing_ok=True)


def _unreferenced(db: Session, sha256: str) -> bool:
    return not db.scalar(select(func.count()).select_from(Dataset).where(
        (Dataset.upload_blob == sha256) | (Dataset.arrays_blob == sha256)))


def erase_forgotten(dataset_id: str) -> int:
    """Erase what can be erased; returns how many samples' bytes left the store."""
    store = get_blob_store()
    with new_session() as db:
        dataset = db.get(Dataset, dataset_id)
        rows = erasable_rows(db, dataset)
        old = (dataset.upload_blob, dataset.arrays_blob)
        if not rows:
            return 0
        new_upload, new_arrays = _rewrite_blobs(store, dataset, rows)
    with session_scope() as db:
        lock_row(db, Dataset, dataset_id)
        dataset = db.get(Dataset, dataset_id, populate_existing=True)
        if (dataset.upload_blob, dataset.arrays_blob) != old:
            return 0  # erased concurrently; what is left is caught by the next pass
        dataset.upload_blob, dataset.arrays_blob = new_upload.sha256, new_arrays.sha256
        for chunk in in_chunks(sorted(rows)):
            db.execute(update(Sample).where(Sample.dataset_id == dataset_id,
                                            Sample.row.in_(chunk)).values(erased=True))
        audit.record(db, "dataset.erased", "dataset", dataset_id, tenant_id=dataset.tenant_id,
                     data={"num_samples": len(rows), "upload_before": old[0],
                           "upload_after": new_upload.sha256, "arrays_before": old[1],
                           "arrays_after": new_arrays.sha256})
    with new_session() as db:
        for sha256 in old:
            if _unreferenced(db, sha256):
                store.delete(sha256)
    log.info("erased %d samples of dataset %s", len(rows), dataset_id)
    return len(rows)


def erase_everything_due() -> int:
    """The periodic pass: erase in every dataset with forgotten but unerased samples."""
    with new_session() as db:
        dataset_ids = list(db.scalars(select(Sample.dataset_id).where(
            Sample.deleted.is_(True), Sample.erased.is_(False)).distinct()))
    return sum(erase_forgotten(dataset_id) for dataset_id in dataset_ids)
