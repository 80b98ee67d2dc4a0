"""A dataset as arrays: what uploads decode to, cached once as safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file


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
        if self.is_image:
            flat = self.x_train.reshape(-1, self.x_train.shape[-1]).astype(np.float64) / 255.0
        else:
            flat = self.x_train.reshape(len(self.x_train), -1).astype(np.float64)
        self.mean = flat.mean(axis=0).astype(np.float32)
        self.std = np.maximum(flat.std(axis=0), 1e-6).astype(np.float32)

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        """Model inputs (float32, NCHW for images) from stored rows of ``x``."""
        self.ensure_stats()
        mean, std = torch.from_numpy(self.mean), torch.from_numpy(self.std)
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.is_image:
            t = t.float().div_(255.0).sub_(mean).div_(std)
            return t.permute(0, 3, 1, 2).contiguous()
        return t.float().sub_(mean).div_(std).reshape(len(x), *self.input_shape)

    def save(self, path: Path) -> None:
        self.ensure_stats()
        meta = {"ids_train": json.dumps(self.ids_train), "classes": json.dumps(self.classes),
                "subjects_train": json.dumps(self.subjects_train)}
        tensors = {"x_train": self.x_train, "y_train": self.y_train.astype(np.int64),
                   "x_test": self.x_test, "y_test": self.y_test.astype(np.int64),
                   "mean": self.mean, "std": self.std}
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
                  metadata=meta)

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
        )
