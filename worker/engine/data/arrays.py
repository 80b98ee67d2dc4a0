"""A dataset as arrays: what uploads decode to, cached once as safetensors."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

# Rows are written out in blocks of about this many bytes, and statistics are computed over
# blocks of about this many values (as float64: 128 MiB), so neither step ever copies a
# whole, possibly huge, array. Data of one block (CIFAR-10's 4,000-image bench subset is
# 12.3M values) gets exactly the figures it got when the whole array was copied at once.
BLOCK_BYTES = 32 << 20
STATS_BLOCK_VALUES = 16 << 20
_SAFETENSORS_DTYPES = {np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64",
                       np.dtype(np.float32): "F32"}


def row_blocks(array: np.ndarray, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Consecutive slices of ``array``'s rows, each about ``block_bytes`` or one row."""
    row_bytes = max(1, array[:1].nbytes)
    step = max(1, block_bytes // row_bytes)
    for start in range(0, len(array), step):
        yield array[start : start + step]


def write_safetensors(path: Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str]) -> None:
    """The safetensors layout, written block by block: ``safetensors.numpy.save_file`` first
    copies every tensor into one ``bytes`` object, which for an upload's pixels doubles them."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, array in tensors.items():
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as the format asks
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for array in tensors.values():
            little_endian = array.dtype.newbyteorder("<")
            for block in row_blocks(array):
                out.write(np.ascontiguousarray(block, dtype=little_endian).data)


@dataclass
class DatasetArrays:
    """Images as uint8 ``N×H×W×C`` (grey images get ``C=1``), or float32 features ``N×D``."""

    x_train: np.ndarray
    y_train: np.ndarray  # int64
    x_test: np.ndarray
    y_test: np.ndarray
    ids_train: list[str]
    classes: list[str]
    subjects_train: list[str | None] | None = None
    # Per-channel (images) or per-feature statistics used to normalise model inputs. Fixed at
    # upload so later edits of the data never shift a trained model's inputs.
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    # A table upload's columns (``TableColumns`` as a dict), which erasure's rewrite of the
    # stored upload needs; None for other formats.
    table: dict | None = None

    @property
    def is_image(self) -> bool:
        return self.x_train.dtype == np.uint8

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """A model input's shape: ``(C, H, W)`` for images, ``(D,)`` for features."""
        if self.is_image:
            _, h, w, c = self.x_train.shape
            return (c, h, w)
        return tuple(self.x_train.shape[1:])

    def ensure_stats(self) -> None:
        if self.mean is not None:
            return
        mean, std = _column_stats(self._float_blocks)
        self.mean = mean.astype(np.float32)
        self.std = np.maximum(std, 1e-6).astype(np.float32)

    def _float_blocks(self) -> Iterator[np.ndarray]:
        """x_train as float64 columns (pixels scaled to 0..1, one column per channel), a block
        of rows at a time: a float64 copy of all of it is 8 times the uint8 pixels."""
        for block in row_blocks(self.x_train, STATS_BLOCK_VALUES * self.x_train.itemsize):
            yield self._as_float64(block)  # no local keeps a block alive past its use

    def _as_float64(self, block: np.ndarray) -> np.ndarray:
        if not self.is_image:
            return block.reshape(len(block), -1).astype(np.float64)
        scaled = block.reshape(-1, block.shape[-1]).astype(np.float64)
        scaled /= 255.0
        return scaled

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        """Model inputs (float32, NCHW for images) from stored rows of ``x``."""
        self.ensure_stats()
        mean, std = torch.from_numpy(self.mean), torch.from_numpy(self.std)
        if self.is_image:
            t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0).sub_(mean).div_(std)
            return t.permute(0, 3, 1, 2).contiguous()
        # A copy: float32 rows would otherwise be normalised in place, in the caller's array
        # (or, for a read-only map of a decoded upload, fault).
        t = torch.from_numpy(np.array(x, dtype=np.float32))
        return t.sub_(mean).div_(std).reshape(len(x), *self.input_shape)

    def save(self, path: Path) -> None:
        self.ensure_stats()
        meta = {"ids_train": json.dumps(self.ids_train), "classes": json.dumps(self.classes),
                "subjects_train": json.dumps(self.subjects_train)}
        if self.table is not None:
            meta["table"] = json.dumps(self.table)
        tensors = {"x_train": self.x_train, "y_train": self.y_train.astype(np.int64),
                   "x_test": self.x_test, "y_test": self.y_test.astype(np.int64),
                   "mean": self.mean, "std": self.std}
        write_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: Path) -> DatasetArrays:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
        t = load_file(str(path))
        return cls(
            x_train=t["x_train"], y_train=t["y_train"], x_test=t["x_test"], y_test=t["y_test"],
            ids_train=json.loads(meta["ids_train"]), classes=json.loads(meta["classes"]),
            subjects_train=json.loads(meta["subjects_train"]), mean=t["mean"], std=t["std"],
            table=json.loads(meta.get("table", "null")),
        )

    @classmethod
    def open(cls, path: Path) -> DatasetArrays:
        """The dataset with ``x_train``/``x_test`` left on disk, read row by row on demand
        (:func:`worker.engine.data.loader.open_arrays`)."""
        from worker.engine.data.loader import open_arrays

        return open_arrays(path)


def _column_stats(blocks: Callable[[], Iterator[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) standard deviation over row blocks, in two passes.

    The arithmetic is numpy's own mean and std applied block by block, so data that fits in
    one block gets exactly the figures ``flat.mean(0)`` and ``flat.std(0)`` give.
    """
    count, total = 0, 0.0
    for block in blocks():
        count, total = count + len(block), total + block.sum(axis=0)
        del block  # one block alive at a time, not two
    mean = total / count
    squares = 0.0
    for block in blocks():  # each block is a fresh copy: squared deviations in place
        block -= mean
        block *= block
        squares = squares + block.sum(axis=0)
        del block
    return mean, np.sqrt(squares / count)
