"""The benchmark's data: decoded once per file into the cache, then cut to a preset's subset."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from worker.bench import BenchConfigError
from worker.bench.presets import CIFAR10, DIGITS, SYNTHETIC, DatasetSpec, cifar10_archive
from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.formats import TableColumns, export_digits, load_dataset_file
from worker.engine.data.text import TextDataset, TextRows, is_text_dataset

SUBSET_SEED = 0  # the same subset for every bench seed, so seeds vary only the training run
VALIDATION_FRACTION = 0.1
# Generated files, by source name: written into the cache on first use.
GENERATED_FILES = {DIGITS: "digits.npz", SYNTHETIC: "synthetic-tabular.npz"}


@dataclass
class BenchData:
    """Model inputs of one dataset, with the digest that keys cached models trained on it."""

    name: str
    sha256: str  # of the uint8/float arrays actually used, after subsetting
    classes: list[str]
    input_shape: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    test_split: str = "test"  # "validation" when tuning carves it from the training data
    # What the data fixes of the model's config: a text classifier's tokenizer (its
    # tokenizer_sha256, tokenizer_config and max_length), which made the token inputs.
    model_config: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "num_train": len(self.y_train),
                "num_test": len(self.y_test), "test_split": self.test_split,
                "num_classes": self.num_classes, "input_shape": list(self.input_shape)}


def load_bench_data(spec: DatasetSpec, cache_dir: Path,
                    architecture_config: dict[str, Any] | None = None) -> BenchData:
    """The preset's data as model inputs: a text table's tokenized for the text classifier
    ``architecture_config`` describes, anything else as its arrays."""
    path = source_file(spec.source, cache_dir)
    stored = decoded_path(path, cache_dir, spec.columns)
    if is_text_dataset(stored):
        return text_bench_data(stored, spec, path.name, architecture_config)
    return to_bench_data(*load_subset_arrays(spec, cache_dir))


def load_subset_arrays(spec: DatasetSpec, cache_dir: Path) -> tuple[DatasetArrays, str]:
    """The preset's subset of the source's arrays, and the source file's name."""
    path = source_file(spec.source, cache_dir)
    return (subset(decoded_arrays(path, cache_dir, spec.columns), spec.train_size,
                   spec.test_size), path.name)


def text_bench_data(stored: Path, spec: DatasetSpec, name: str,
                    architecture_config: dict[str, Any] | None) -> BenchData:
    """A decoded text table as a text classifier's inputs: tokenized as ``lethe train``
    tokenizes (``spec.tokenizer``, else a word-level tokenizer built from every training
    text of the file), then cut to the preset's stratified subsets."""
    from worker.engine.architectures.huggingface import with_labels
    from worker.engine.hf_files import tokenized_text

    if not architecture_config or "hf_config" not in architecture_config:
        raise BenchConfigError(f"{name} is a text dataset: it needs a text classifier "
                               "(--architecture hf-text-classifier --config config.json)")
    with TextRows.open(stored) as rows:
        classes = [str(c) for c in rows.classes]
        given = {**architecture_config,
                 "hf_config": with_labels(architecture_config["hf_config"], classes)}
        try:
            config, _, (x_train, y_train, x_test, y_test) = tokenized_text(
                rows, given, None, None if spec.tokenizer is None else Path(spec.tokenizer))
        except ValueError as exc:  # a config or tokenizer this data cannot use
            raise BenchConfigError(f"{name}: {exc}") from None
    train_rows = torch.from_numpy(_stratified_rows(y_train.numpy(), spec.train_size))
    test_rows = torch.from_numpy(_stratified_rows(y_test.numpy(), spec.test_size))
    x_train, y_train = x_train[train_rows], y_train[train_rows].clone()
    x_test, y_test = x_test[test_rows], y_test[test_rows].clone()
    digest = hashlib.sha256()
    for tensor in (*x_train.values(), y_train, *x_test.values(), y_test):
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return BenchData(
        name=name, sha256=digest.hexdigest(), classes=classes, input_shape=(),
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        model_config={"tokenizer_sha256": config.tokenizer_sha256,
                      "tokenizer_config": config.tokenizer_config,
                      "max_length": config.max_length})


def load_validation_arrays(spec: DatasetSpec, cache_dir: Path, how: str
                           ) -> tuple[DatasetArrays, str]:
    """The arrays a sweep runs on, the test split replaced by a validation split: ``carve``
    takes it out of the preset's training subset, ``unused`` from the source's training rows
    the subset leaves out (so the models train on exactly the rows the preset's do)."""
    if how == "carve":
        arrays, name = load_subset_arrays(spec, cache_dir)
        return carve_validation(arrays), name
    if how == "unused":
        path = source_file(spec.source, cache_dir)
        return unused_validation(decoded_arrays(path, cache_dir), spec), path.name
    raise BenchConfigError(f"unknown validation split {how!r}; known: carve, unused")


def source_file(source: str, cache_dir: Path) -> Path:
    """The upload-format file behind a dataset source name or path."""
    if source == CIFAR10:
        return cifar10_archive()
    if source in GENERATED_FILES:
        path = cache_dir / "datasets" / GENERATED_FILES[source]
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            export = export_digits if source == DIGITS else export_synthetic
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            export(partial)
            partial.replace(path)  # atomic: a concurrent run never reads half a file
        return path
    path = Path(source)
    if not path.is_file():
        raise BenchConfigError(f"dataset file {path} not found")
    return path


def export_synthetic(path: Path) -> dict[str, Any]:
    """Write a fixed synthetic table as an upload-ready ``.npz``: scikit-learn's
    ``make_classification`` (3,000 rows, 20 float features of which 10 informative, 8 classes
    of two clusters each, 1% label noise, seed 0), split 80/20 stratified with seed 0. Hard
    enough that an MLP overfits it (test accuracy well under training accuracy), so there is
    membership to infer."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=3_000, n_features=20, n_informative=10, n_redundant=4,
                               n_classes=8, n_clusters_per_class=2, class_sep=1.0, flip_y=0.01,
                               random_state=0)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=0.2, stratify=y, random_state=0)
    with Path(path).open("wb") as out:  # a file object stops numpy appending ".npz"
        np.savez_compressed(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return {"path": str(path), "num_train": len(x_train), "num_test": len(x_test),
            "num_classes": 8, "input_shape": [20]}


def decoded_arrays(path: Path, cache_dir: Path,
                   columns: TableColumns | None = None) -> DatasetArrays:
    """The file's arrays; decoding JPEG archives takes minutes, so keep them by file digest."""
    cached = decoded_path(path, cache_dir, columns)
    if is_text_dataset(cached):
        raise BenchConfigError(f"{path.name} is a text dataset: it needs a text classifier "
                               "(--architecture hf-text-classifier --config config.json)")
    return DatasetArrays.load(cached)


def decoded_path(path: Path, cache_dir: Path, columns: TableColumns | None = None) -> Path:
    """The file decoded into the cache (arrays, or a text dataset's stored texts), kept by
    the file's digest and the table columns it was read with."""
    read_as = "" if columns is None else "-" + hashlib.sha256(
        json.dumps(asdict(columns), sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_dir / "datasets" / f"{file_sha256(path)}{read_as}.safetensors"
    if cached.is_file():
        return cached
    decoded = load_dataset_file(path, path.name, columns=columns)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        decoded.save(partial)
        partial.replace(cached)  # atomic: a concurrent run never reads half a file
    finally:
        if isinstance(decoded, TextDataset):
            decoded.close()  # its texts' spill files
    return cached


def subset(arrays: DatasetArrays, train_size: int | None,
           test_size: int | None) -> DatasetArrays:
    """Stratified subsets of both splits; normalisation statistics recomputed on the subset."""
    train_rows = _stratified_rows(arrays.y_train, train_size)
    test_rows = _stratified_rows(arrays.y_test, test_size)
    return _with_splits(arrays, train_rows, arrays.x_test[test_rows], arrays.y_test[test_rows])


def _with_splits(arrays: DatasetArrays, train_rows: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray) -> DatasetArrays:
    """These training rows (with their ids and subjects) and this test split; normalisation
    statistics dropped, as they described other rows."""
    subjects = arrays.subjects_train
    return replace(
        arrays, x_train=arrays.x_train[train_rows], y_train=arrays.y_train[train_rows],
        x_test=x_test, y_test=y_test,
        ids_train=[arrays.ids_train[row] for row in train_rows],
        subjects_train=None if subjects is None else [subjects[row] for row in train_rows],
        mean=None, std=None)


def _stratified_rows(labels: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    rows, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels,
                               random_state=SUBSET_SEED)
    return np.sort(rows)


def carve_validation(arrays: DatasetArrays, fraction: float = VALIDATION_FRACTION
                     ) -> DatasetArrays:
    """Training data split into a smaller training split and a validation split that stands
    in for the test split, so tuning never sees the test data."""
    keep, held_out = train_test_split(np.arange(len(arrays.y_train)), test_size=fraction,
                                      stratify=arrays.y_train, random_state=SUBSET_SEED)
    keep, held_out = np.sort(keep), np.sort(held_out)
    return _with_splits(arrays, keep, arrays.x_train[held_out], arrays.y_train[held_out])


def unused_validation(arrays: DatasetArrays, spec: DatasetSpec) -> DatasetArrays:
    """The preset's training subset, validated on a stratified sample of the training rows
    outside it, as many as the preset's test subset has (a 2,000-row validation split measures
    accuracy about twice as precisely as the 400 rows a 10% carve leaves)."""
    train_rows = _stratified_rows(arrays.y_train, spec.train_size)
    unused = np.setdiff1d(np.arange(len(arrays.y_train)), train_rows)
    size = spec.test_size or len(arrays.y_test)
    if len(unused) < max(size, arrays.num_classes):
        raise BenchConfigError(
            f"the preset trains on {len(train_rows)} of {len(arrays.y_train)} training rows, "
            f"leaving {len(unused)}: too few for a {size}-row validation split; use carve")
    held_out, _ = train_test_split(unused, train_size=min(size, len(unused) - 1),
                                   stratify=arrays.y_train[unused], random_state=SUBSET_SEED)
    held_out = np.sort(held_out)
    return _with_splits(arrays, train_rows, arrays.x_train[held_out], arrays.y_train[held_out])


def to_bench_data(arrays: DatasetArrays, name: str, test_split: str = "test") -> BenchData:
    return BenchData(
        name=name, sha256=arrays_sha256(arrays), classes=list(arrays.classes),
        input_shape=tuple(arrays.input_shape),
        x_train=arrays.inputs(arrays.x_train), y_train=torch.from_numpy(arrays.y_train),
        x_test=arrays.inputs(arrays.x_test), y_test=torch.from_numpy(arrays.y_test),
        test_split=test_split)


def arrays_sha256(arrays: DatasetArrays) -> str:
    digest = hashlib.sha256()
    for array in (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test):
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
