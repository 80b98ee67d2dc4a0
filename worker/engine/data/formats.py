"""Decoding an upload into :class:`DatasetArrays`, chosen by the file name's suffix."""

from __future__ import annotations

from pathlib import Path

from worker.engine.data.archive import (
    ArchiveLimits,
    DatasetFormatError,
    iter_tar_members,
    iter_zip_members,
)
from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.imagefolder import load_image_folder, wanted_member
from worker.engine.data.npz import export_digits, load_npz

__all__ = [
    "SUFFIX_FORMATS",
    "ArchiveLimits",
    "DatasetFormatError",
    "dataset_format",
    "export_digits",
    "load_dataset_file",
]

SUFFIX_FORMATS = {".npz": "npz", ".zip": "zip", ".tar": "tar", ".tar.gz": "tar.gz",
                  ".tgz": "tar.gz"}


def dataset_format(filename: str) -> str:
    """``npz``, ``zip``, ``tar`` or ``tar.gz``; raises for any other suffix."""
    lower = filename.lower()
    for suffix, fmt in SUFFIX_FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    raise DatasetFormatError(f"{filename!r}: unsupported file type; expected one of "
                             f"{', '.join(SUFFIX_FORMATS)}")


def load_dataset_file(path: Path, filename: str,
                      limits: ArchiveLimits | None = None) -> DatasetArrays:
    """Decode the upload stored at ``path`` whose client-side name was ``filename``.

    Raises :class:`DatasetFormatError` (a ``ValueError``) with a message fit for the client.
    """
    fmt = dataset_format(filename)
    limits = limits or ArchiveLimits()
    path = Path(path)
    if fmt == "npz":
        return load_npz(path, limits)
    if fmt == "zip":
        members = iter_zip_members(path, limits, wanted_member)
    else:
        members = iter_tar_members(path, limits, wanted_member, gzipped=fmt == "tar.gz")
    return load_image_folder(members, limits)
