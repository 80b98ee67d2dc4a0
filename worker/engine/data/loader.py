"""Reading a stored dataset's rows on demand, so a job holds only the rows it touches.

A decoded dataset is a safetensors file in the blob store (:mod:`worker.engine.data.arrays`).
:func:`open_arrays` reads its header, labels and statistics (8 bytes a row, plus the
per-feature mean and standard deviation) and leaves the inputs on disk as
:class:`StoredArray`\\ s; :class:`LazyInputs` turns one of them into what
:class:`~worker.engine.methods.UnlearningData` expects of ``x_train`` and ``x_test``: indexed
with row numbers (a tensor, an array, a list, a slice, a mask or one int) it reads those rows
and returns them as normalised float32 model inputs, exactly the values the whole split
normalised at once would hold at those rows.

Rows are read with positioned reads (``preadv``) of the blob file, coalesced into runs of
consecutive rows, rather than through a memory map: every page a map touches (and the
kernel's fault-around, 64 KiB a fault) counts in the process's resident memory, which is
what ``worker_max_memory_mb`` recycles a Celery child for; read pages stay in the page cache,
the kernel's to evict. So a job's memory is its model, its index tensors (8 bytes a row) and
the rows a method asked for: D_f, samples of D_r, evaluation samples. A method that trains on
all of D_r (``retrain``, ``finetune``, ``random-label``) still asks for all of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

MAX_HEADER_BYTES = 100 << 20  # what the safetensors library itself accepts
_DTYPES = {"U8": np.dtype(np.uint8), "I64": np.dtype("<i8"), "F32": np.dtype("<f4")}
_READ_CHUNK = 1 << 30  # preadv moves at most about 2 GiB a call on Linux


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header (``__metadata__`` included) and where the data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {size} bytes")
        header = json.loads(f.read(size))
    return header, 8 + size


class StoredArray:
    """One tensor of a safetensors file, read row by row (see the module's doc).

    Holds the file open for as long as it lives; thread-safe (reads are positioned).
    """

    def __init__(self, path: Path, name: str, header: dict | None = None,
                 data_start: int | None = None):
        if header is None or data_start is None:
            header, data_start = read_header(path)
        entry = header[name]
        self.path, self.name = Path(path), name
        self.dtype = _DTYPES[entry["dtype"]]
        self.shape = tuple(int(d) for d in entry["shape"])
        start, end = entry["data_offsets"]
        if end - start != math.prod(self.shape) * self.dtype.itemsize:
            raise ValueError(f"{path}: tensor {name} has the wrong size")
        self.offset = data_start + start
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)
        self._lock = threading.Lock()  # guards close() only

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def __getitem__(self, index) -> np.ndarray:
        rows = row_numbers(index, len(self))
        if isinstance(rows, int):
            return self.take(np.array([rows]))[0]
        return self.take(rows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (any order, repeats allowed) as a fresh array."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row {int(rows.max() if rows.max() >= len(self) else rows.min())}"
                             f" is out of range for {len(self)} rows")
        ordered = len(rows) < 2 or bool((np.diff(rows) > 0).all())
        unique, inverse = (rows, None) if ordered else np.unique(rows, return_inverse=True)
        out = np.empty((len(unique), *self.shape[1:]), dtype=self.dtype)
        if len(unique):
            breaks = np.flatnonzero(np.diff(unique) != 1) + 1
            starts = np.concatenate([[0], breaks]).tolist()
            ends = np.concatenate([breaks, [len(unique)]]).tolist()
            flat = out.reshape(-1).view(np.uint8)
            first_rows = unique[starts].tolist()
            for begin, end, row in zip(starts, ends, first_rows, strict=True):
                self._read_into(flat[begin * self.row_bytes : end * self.row_bytes],
                                self.offset + row * self.row_bytes)
        if not self.dtype.isnative:
            out = out.astype(self.dtype.newbyteorder("="))
        return out if inverse is None else out[inverse.reshape(-1)]

    def _read_into(self, buffer: np.ndarray, position: int) -> None:
        done = 0
        while done < len(buffer):
            view = buffer[done : done + _READ_CHUNK]
            got = os.preadv(self._fd, [view], position + done)
            if got <= 0:
                raise OSError(f"{self.path}: tensor {self.name} is truncated")
            done += got

    def close(self) -> None:
        lock = getattr(self, "_lock", None)  # None: __init__ failed before opening the file
        if lock is None:
            return
        with lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit os may be gone already
            self.close()


def row_numbers(index, count: int) -> np.ndarray | int:
    """Row numbers (int64) from any index a tensor accepts on its first dimension: an int, a
    slice, a range, a list, an integer or boolean array or tensor. An int stays an int."""
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    if isinstance(index, (int, np.integer)):
        row = int(index)
        if not -count <= row < count:
            raise IndexError(f"row {row} is out of range for {count} rows")
        return row % count
    if isinstance(index, slice):
        return np.arange(*index.indices(count), dtype=np.int64)
    if isinstance(index, range):
        index = np.arange(index.start, index.stop, index.step, dtype=np.int64)
    array = np.asarray(index)
    if array.dtype == np.bool_:
        if array.shape != (count,):
            raise IndexError(f"a mask of shape {array.shape} for {count} rows")
        return np.flatnonzero(array)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise IndexError(f"rows must be integers, not {array.dtype}")
    rows = array.astype(np.int64).reshape(-1)
    return np.where(rows < 0, rows + count, rows)


def open_arrays(path: Path):
    """The dataset at ``path`` (a :class:`DatasetArrays` safetensors file) with its inputs
    left on disk: ``x_train``/``x_test`` are :class:`StoredArray`\\ s, the rest is read."""
    from worker.engine.data.arrays import DatasetArrays

    header, data_start = read_header(path)
    meta = header.get("__metadata__") or {}
    small = {name: StoredArray(path, name, header, data_start)
             for name in ("y_train", "y_test", "mean", "std")}
    loaded = {name: array.take(np.arange(len(array))) for name, array in small.items()}
    for array in small.values():
        array.close()
    return DatasetArrays(
        x_train=StoredArray(path, "x_train", header, data_start),
        y_train=loaded["y_train"],
        x_test=StoredArray(path, "x_test", header, data_start), y_test=loaded["y_test"],
        ids_train=_LazyJsonList(meta.get("ids_train", "[]")),
        classes=json.loads(meta["classes"]),
        subjects_train=_lazy_subjects(meta.get("subjects_train", "null")),
        mean=loaded["mean"], std=loaded["std"], table=json.loads(meta.get("table", "null")))


class _LazyJsonList(Sequence):
    """A JSON list parsed at first use (a job rarely needs a million sample ids)."""

    def __init__(self, text: str):
        self._text, self._items = text, None

    def _parsed(self) -> list:
        if self._items is None:
            self._items, self._text = json.loads(self._text), None
        return self._items

    def __getitem__(self, index):
        return self._parsed()[index]

    def __len__(self) -> int:
        return len(self._parsed())

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


def _lazy_subjects(text: str):
    return None if text == "null" else _LazyJsonList(text)


class LazyInputs:
    """A split's model inputs as far as unlearning methods use them: ``len()``, ``shape``,
    ``dtype`` and indexing on the first dimension, which reads and normalises those rows
    (``arrays.inputs``) and returns an ordinary float32 tensor."""

    def __init__(self, arrays, stored: StoredArray):
        self.arrays, self.stored = arrays, stored
        self.shape = torch.Size((len(stored), *arrays.input_shape))
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __getitem__(self, index) -> torch.Tensor:
        rows = row_numbers(index, len(self))
        if isinstance(rows, int):
            return self.arrays.inputs(self.stored.take(np.array([rows])))[0]
        return self.arrays.inputs(self.stored.take(rows))

    def __repr__(self) -> str:
        return f"LazyInputs({self.stored.path.name}:{self.stored.name}, shape={tuple(self.shape)})"


class ZeroedRows:
    """A :class:`StoredArray` whose rows ``rows`` read as zeros: what erasure writes in place
    of the erased samples, a block at a time (``write_safetensors`` slices it), so erasing
    rows of a dataset larger than memory never holds the dataset either."""

    def __init__(self, stored: StoredArray, rows):
        self.stored = stored
        self.rows = np.unique(np.asarray(list(rows), dtype=np.int64))
        self.shape, self.dtype = stored.shape, stored.dtype

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def ndim(self) -> int:
        return self.stored.ndim

    @property
    def nbytes(self) -> int:
        return self.stored.nbytes

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("ZeroedRows is read in slices of rows")
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("ZeroedRows is read in consecutive rows")
        block = self.stored.take(np.arange(start, stop))
        block[self.rows[(self.rows >= start) & (self.rows < stop)] - start] = 0
        return block
