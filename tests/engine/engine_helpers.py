"""Builders shared by the engine tests: tiny images, archives, unlearning requests."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.engine.data.arrays import DatasetArrays
from worker.engine.methods import UnlearningData


def png_bytes(size: tuple[int, int] = (4, 4), mode: str = "RGB", color=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], *, gzipped: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gzipped else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


ArchiveWriter = Callable[[Path, dict[str, bytes]], Path]
ARCHIVE_WRITERS: dict[str, ArchiveWriter] = {
    ".zip": write_zip,
    ".tar": write_tar,
    ".tar.gz": lambda path, members: write_tar(path, members, gzipped=True),
}


def unlearning_data(arrays: DatasetArrays, forget_classes: list[int]) -> UnlearningData:
    """A class-forgetting request over ``arrays``, as the job runner would build it."""
    y_train = torch.from_numpy(arrays.y_train)
    in_forget = torch.isin(y_train, torch.tensor(forget_classes))
    return UnlearningData(
        x_train=arrays.inputs(arrays.x_train), y_train=y_train,
        x_test=arrays.inputs(arrays.x_test), y_test=torch.from_numpy(arrays.y_test),
        forget_idx=torch.nonzero(in_forget).squeeze(1),
        retain_idx=torch.nonzero(~in_forget).squeeze(1),
        num_classes=arrays.num_classes, forget_classes=forget_classes,
    )


def random_images(n: int, shape=(8, 8, 1), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
