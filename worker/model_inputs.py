"""Inputs for models that do not take the dataset's default tensors: a text classifier's token
ids (tokenized once per dataset blob and tokenizer, cached as a blob), an image classifier's
pixels normalised as its preprocessor config says.

:func:`inputs_for` answers ``None`` for every other model, which takes the dataset's own
normalised arrays (``worker.execution.model_inputs``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from functools import lru_cache

import numpy as np
import torch
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from app.core.db import new_session
from app.core.storage import get_blob_store
from app.datasets.tables import Dataset
from app.models.tables import Model, TokenizedInputs
from worker.engine.architectures import ARCHITECTURES
from worker.engine.architectures.huggingface import HFImageConfig, HFTextConfig, normalisation
from worker.engine.data.tokenized import (
    load_tokenizer,
    read_tokenized,
    tokenize_source,
    tokenizer_digest,
    write_tokenized,
)

log = logging.getLogger(__name__)

Inputs = tuple[object, torch.Tensor, object, torch.Tensor, int]  # x, y train; x, y test; classes
_tokenizing = threading.Lock()


def inputs_for(model: Model, dataset: Dataset) -> Inputs | None:
    """``(x_train, y_train, x_test, y_test, num_classes)`` when the model needs inputs of
    its own, else None."""
    config_model = ARCHITECTURES.get(model.architecture).config_model
    if issubclass(config_model, HFTextConfig):
        config = HFTextConfig.model_validate(model.architecture_config)
        return text_inputs(dataset.arrays_blob, config.tokenizer_sha256,
                           _frozen(config.tokenizer_config), config.max_length)
    if issubclass(config_model, HFImageConfig):
        config = HFImageConfig.model_validate(model.architecture_config)
        if config.preprocessor is not None:
            stats = normalisation(config.preprocessor, config.input_shape[0])
            if stats is not None:
                return preprocessed_image_inputs(dataset.arrays_blob, tuple(stats[0]),
                                                 tuple(stats[1]))
    return None


def _frozen(config: dict) -> str:
    import json

    return json.dumps(config, sort_keys=True)


@lru_cache(maxsize=2)
def preprocessed_image_inputs(arrays_blob: str, mean: tuple[float, ...],
                              std: tuple[float, ...]) -> Inputs:
    """The dataset's images scaled to 0..1 and normalised with the preprocessor's mean and
    standard deviation instead of the dataset's own; past ``job_resident_dataset_bytes``
    read row by row on demand, as ``worker.execution.model_inputs`` reads any dataset."""
    from app.core.config import get_settings
    from worker.engine.data.arrays import DatasetArrays
    from worker.engine.data.loader import LazyInputs

    path = get_blob_store().path(arrays_blob)
    stats = {"mean": np.array(mean, dtype=np.float32), "std": np.array(std, dtype=np.float32)}
    arrays = DatasetArrays.open(path)
    labels = torch.from_numpy(arrays.y_train), torch.from_numpy(arrays.y_test)
    if arrays.x_train.nbytes + arrays.x_test.nbytes > get_settings().job_resident_dataset_bytes:
        lazy = dataclasses.replace(arrays, **stats)
        return (LazyInputs(lazy, arrays.x_train), labels[0], LazyInputs(lazy, arrays.x_test),
                labels[1], arrays.num_classes)
    arrays = dataclasses.replace(DatasetArrays.load(path), **stats)
    return (arrays.inputs(arrays.x_train), labels[0], arrays.inputs(arrays.x_test), labels[1],
            arrays.num_classes)


@lru_cache(maxsize=2)
def text_inputs(arrays_blob: str, tokenizer_sha256: str, tokenizer_config: str,
                max_length: int) -> Inputs:
    """Token ids of every text, from the cache blob when there is one, else tokenized now
    (once: concurrent jobs of this process wait for the first) and cached."""
    import json

    from worker.engine.data.text import TextRows

    store = get_blob_store()
    config = json.loads(tokenizer_config)
    digest = tokenizer_digest(tokenizer_sha256, config, max_length)
    with TextRows.open(store.path(arrays_blob)) as rows:
        labels = (torch.from_numpy(rows.y_train.copy()), torch.from_numpy(rows.y_test.copy()),
                  rows.num_classes)
        with _tokenizing:
            cached = _cached(arrays_blob, digest)
            if cached is None:
                tokenizer = load_tokenizer(store.path(tokenizer_sha256).read_bytes(), config,
                                           max_length)
                tensors = tokenize_source(tokenizer, rows)
                cached = _store(arrays_blob, digest, tensors)
    x_train, x_test = read_tokenized(store.path(cached))
    return x_train, labels[0], x_test, labels[1], labels[2]


def _cached(source: str, digest: str) -> str | None:
    store = get_blob_store()
    with new_session() as db:
        row = db.get(TokenizedInputs, (source, digest))
        if row is not None and store.exists(row.blob_sha256):
            return row.blob_sha256
    return None


def _store(source: str, digest: str, tensors: dict[str, torch.Tensor]) -> str:
    store = get_blob_store()
    path = store.temp_path(".safetensors")
    write_tokenized(tensors, path, digest, source)
    blob = store.put_file(path, move=True)
    with new_session() as db:
        row = db.get(TokenizedInputs, (source, digest))
        if row is None:
            db.add(TokenizedInputs(source_blob=source, tokenizer_digest=digest,
                                   blob_sha256=blob.sha256, size_bytes=blob.size))
        else:
            row.blob_sha256, row.size_bytes = blob.sha256, blob.size
        try:
            db.commit()
        except IntegrityError:  # another worker cached the same tokens meanwhile
            db.rollback()
    log.info("tokenized dataset blob %s (tokenizer %s): %s bytes", source[:12], digest[:12],
             blob.size)
    return blob.sha256


def drop_stale_tokenized() -> int:
    """Delete the token caches of dataset blobs no dataset holds any more (erasure wrote a
    new blob, or the dataset was deleted): tokens of erased text must not outlive it."""
    store = get_blob_store()
    with new_session() as db:
        live = set(db.scalars(select(Dataset.arrays_blob)))
        stale = [row for row in db.scalars(select(TokenizedInputs))
                 if row.source_blob not in live]
        doomed = {row.blob_sha256 for row in stale}
        for row in stale:  # a statement, not the ORM's delete: another sweep may race us
            db.execute(delete(TokenizedInputs).where(
                TokenizedInputs.source_blob == row.source_blob,
                TokenizedInputs.tokenizer_digest == row.tokenizer_digest))
        db.commit()
        still_used = set(db.scalars(select(TokenizedInputs.blob_sha256)))
    for sha256 in doomed - still_used:
        store.delete(sha256)
    if stale:
        text_inputs.cache_clear()
    return len(stale)
