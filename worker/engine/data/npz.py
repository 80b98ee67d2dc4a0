"""NumPy ``.npz`` uploads, and scikit-learn's digits exported in that format."""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from worker.engine.data.archive import (
    ArchiveLimits,
    DatasetFormatError,
    check_text,
    check_zip_listing,
    open_zip,
)
from worker.engine.data.arrays import DatasetArrays

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_ARRAYS = ("ids_train", "subjects_train")
MAX_CLASSES = 100_000  # what ArchitectureConfig accepts
Headers = dict[str, tuple[tuple[int, ...], np.dtype]]  # key -> (shape, dtype)
SHOWN_CLASSES = 10  # missing classes named in an error


def load_npz(path: Path, limits: ArchiveLimits) -> DatasetArrays:
    """Everything is checked from the headers, then labels, ids and subjects (small, and what
    the database must hold) are read and checked before the inputs, which are read last."""
    headers = _read_headers(path, limits)
    rows = {key: _input_rows(headers[key][0], key) for key in ("x_train", "x_test")}
    _check_decoded_size(headers, limits)
    try:
        with np.load(path, allow_pickle=False) as npz:
            y_train = _as_labels(npz["y_train"], "y_train", rows["x_train"])
            y_test = _as_labels(npz["y_test"], "y_test", rows["x_test"])
            num_classes = _num_classes(y_train, y_test)
            ids = _sample_ids(npz.get("ids_train"), rows["x_train"], limits)
            subjects = _subjects(npz.get("subjects_train"), rows["x_train"], limits)
            x_train = _as_inputs(npz["x_train"], "x_train")
            x_test = _as_inputs(npz["x_test"], "x_test")
    except DatasetFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetFormatError(f"not a readable .npz file: {exc}") from exc
    if (x_train.dtype, x_train.shape[1:]) != (x_test.dtype, x_test.shape[1:]):
        raise DatasetFormatError(f"x_train rows are {x_train.dtype} {x_train.shape[1:]} but "
                                 f"x_test rows are {x_test.dtype} {x_test.shape[1:]}")
    return DatasetArrays(
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, ids_train=ids,
        classes=[str(label) for label in range(num_classes)], subjects_train=subjects)


def _read_headers(path: Path, limits: ArchiveLimits) -> Headers:
    with open_zip(path) as zf:
        members = check_zip_listing(zf, path.stat().st_size, limits)
        missing = [key for key in REQUIRED_ARRAYS if f"{key}.npy" not in members]
        if missing:
            raise DatasetFormatError(f"missing arrays: {', '.join(missing)}")
        return {key: _check_npy_header(zf, members[f"{key}.npy"], key)
                for key in REQUIRED_ARRAYS + OPTIONAL_ARRAYS if f"{key}.npy" in members}


def _check_npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                      key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Reject object arrays, and headers that claim more data than the member holds (numpy
    would allocate the claimed size before noticing)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    with zf.open(info) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version not in readers:
                raise DatasetFormatError(f"{key}: unsupported .npy version {version}")
            shape, _fortran_order, dtype = readers[version](fp)
        except DatasetFormatError:
            raise
        except (ValueError, SyntaxError, OSError) as exc:
            raise DatasetFormatError(f"{key}: not a .npy array ({exc})") from exc
    if dtype.hasobject:
        raise DatasetFormatError(f"{key}: object arrays are not accepted (loading them would "
                                 "unpickle untrusted data)")
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise DatasetFormatError(f"{key}: header claims shape {shape} but the member is smaller")
    return shape, dtype


def _input_rows(shape: tuple[int, ...], key: str) -> int:
    if len(shape) not in (2, 3, 4):
        raise DatasetFormatError(f"{key} must be N×D features or N×H×W[×C] images, "
                                 f"got shape {shape}")
    if shape[0] == 0:
        raise DatasetFormatError(f"{key} has no rows")
    return shape[0]


def _check_decoded_size(headers: Headers, limits: ArchiveLimits) -> None:
    """What the inputs take once decoded (uint8 images, float32 features), before any is read."""
    decoded = sum(math.prod(shape) * (4 if len(shape) == 2 else 1)
                  for key, (shape, _) in headers.items() if key in ("x_train", "x_test"))
    if decoded > limits.max_decoded_bytes:
        raise DatasetFormatError(f"x_train and x_test: decoded arrays exceed "
                                 f"{limits.max_decoded_bytes} bytes ({decoded})")


def _as_inputs(array: np.ndarray, key: str) -> np.ndarray:
    """uint8 ``N×H×W×C`` images or float32 ``N×D`` features, as DatasetArrays stores them."""
    if len(array) == 0:
        raise DatasetFormatError(f"{key} has no rows")
    if array.ndim == 2:
        return _as_features(array, key)
    if array.ndim in (3, 4):
        images = _as_uint8(array, key)
        if images.ndim == 3:
            return images[..., None]
        if images.shape[-1] > 4 and images.shape[1] <= 4:
            raise DatasetFormatError(f"{key} of shape {images.shape} looks channels-first; "
                                     "images must be N×H×W×C")
        return images
    raise DatasetFormatError(f"{key} must be N×D features or N×H×W[×C] images, "
                             f"got shape {array.shape}")


def _as_features(array: np.ndarray, key: str) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DatasetFormatError(f"{key}: features must be numbers, got {array.dtype}")
    features = array.astype(np.float32)
    if not np.isfinite(features).all():
        raise DatasetFormatError(f"{key}: features must be finite float32 values")
    return features


def _as_uint8(array: np.ndarray, key: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    # Integer pixels in 0..255 stored in a wider type are harmless to accept.
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise DatasetFormatError(f"{key}: images must be uint8 values 0..255, got {array.dtype}; "
                             "pass float data as N×D features")


def _as_labels(array: np.ndarray, key: str, rows: int) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or len(array) != rows:
        raise DatasetFormatError(f"{key} must hold {rows} labels, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise DatasetFormatError(f"{key}: labels must be integers, got {array.dtype}")
    if array.min() < 0 or array.max() >= MAX_CLASSES:
        raise DatasetFormatError(f"{key}: labels must lie in [0, {MAX_CLASSES})")
    return array.astype(np.int64)


def _num_classes(y_train: np.ndarray, y_test: np.ndarray) -> int:
    """K, where the classes are 0..K-1 and each has a training sample: a model's K outputs
    must each be learnable, and a label such as 99999 must not make 100,000 classes."""
    num_classes = int(y_train.max()) + 1
    if num_classes < 2:
        raise DatasetFormatError("a dataset needs at least 2 classes")
    missing = np.setdiff1d(np.arange(num_classes), y_train)
    if len(missing):
        shown = ", ".join(str(label) for label in missing[:SHOWN_CLASSES])
        more = f" and {len(missing) - SHOWN_CLASSES} more" if len(missing) > SHOWN_CLASSES else ""
        raise DatasetFormatError(
            f"y_train: classes must be 0..K-1 with every class in the training split; labels "
            f"go up to {num_classes - 1} but classes {shown}{more} have no training sample")
    if y_test.max() >= num_classes:
        raise DatasetFormatError(f"y_test has label {int(y_test.max())} but training labels "
                                 f"stop at {num_classes - 1}")
    return num_classes


def _as_strings(array: np.ndarray, key: str, rows: int) -> list[str]:
    if array.dtype.kind not in "US" or array.ndim != 1 or len(array) != rows:
        raise DatasetFormatError(f"{key} must be {rows} strings, got {array.dtype} "
                                 f"of shape {array.shape}")
    if array.dtype.kind == "U":
        return array.tolist()
    try:
        return [value.decode("utf-8") for value in array.tolist()]
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{key}: not UTF-8 ({exc})") from exc


def _sample_ids(array: np.ndarray | None, rows: int, limits: ArchiveLimits) -> list[str]:
    if array is None:
        return [str(row) for row in range(rows)]
    ids = _as_strings(array, "ids_train", rows)
    if not all(ids):
        raise DatasetFormatError("ids_train: ids must not be empty")
    for sample_id in ids:
        check_text("ids_train: id", sample_id, limits.max_id_chars)
    if len(set(ids)) != rows:
        duplicate = next(i for i, count in Counter(ids).items() if count > 1)
        raise DatasetFormatError(f"ids_train: id {duplicate!r} appears more than once")
    return ids


def _subjects(array: np.ndarray | None, rows: int,
              limits: ArchiveLimits) -> list[str | None] | None:
    if array is None:
        return None
    subjects = _as_strings(array, "subjects_train", rows)
    for subject in subjects:
        check_text("subjects_train: subject", subject, limits.max_subject_chars)
    return [subject or None for subject in subjects]


def export_digits(path: Path) -> dict[str, Any]:
    """Write scikit-learn's bundled digits (8×8 grey, 10 classes) as an upload-ready ``.npz``:
    pixels 0..16 scaled to 0..255, a stratified 80/20 train/test split with seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0)
    with Path(path).open("wb") as out:  # a file object stops numpy appending ".npz"
        np.savez_compressed(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return {"path": str(path), "num_train": len(x_train), "num_test": len(x_test),
            "num_classes": 10, "input_shape": [1, 8, 8]}
