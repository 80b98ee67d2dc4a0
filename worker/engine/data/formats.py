"""Decoding an upload into :class:`DatasetArrays`, chosen by the file name's suffix."""

from __future__ import annotations

from pathlib import Path

from worker.engine.data.archive import (
    ArchiveLimits,
    DatasetFormatError,
    check_zip_listing,
    iter_tar_members,
    iter_zip_members,
    open_zip,
)
from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.imagefolder import (
    SUBJECTS_FILE,
    image_location,
    load_image_folder,
    wanted_member,
)
from worker.engine.data.npz import export_digits, load_npz
from worker.engine.data.tables import TABLE_FORMATS, TableColumns, decode_table
from worker.engine.data.text import TextDataset

__all__ = [
    "SUFFIX_FORMATS",
    "TABLE_FORMATS",
    "ArchiveLimits",
    "DatasetFormatError",
    "TableColumns",
    "TextDataset",
    "dataset_format",
    "export_digits",
    "load_dataset_file",
]

SUFFIX_FORMATS = {".npz": "npz", ".zip": "zip", ".tar": "tar", ".tar.gz": "tar.gz",
                  ".tgz": "tar.gz", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".parquet": "parquet"}


def dataset_format(filename: str) -> str:
    """``npz``, ``zip``, ``tar``, ``tar.gz``, ``csv``, ``jsonl`` or ``parquet``; raises for
    any other suffix."""
    lower = filename.lower()
    for suffix, fmt in SUFFIX_FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    raise DatasetFormatError(f"{filename!r}: unsupported file type; expected one of "
                             f"{', '.join(SUFFIX_FORMATS)}")


def load_dataset_file(path: Path, filename: str, limits: ArchiveLimits | None = None,
                      scratch_dir: Path | None = None, columns: TableColumns | None = None,
                      ) -> DatasetArrays | TextDataset:
    """Decode the upload stored at ``path`` whose client-side name was ``filename``.

    An archive's images are decoded one at a time into an unnamed spill file in
    ``scratch_dir`` (default: the system's temporary directory), then copied into arrays of
    their final size: memory holds those arrays, bounded by ``limits.max_decoded_bytes``,
    never a list of images as well.

    A table (CSV, JSON Lines, Parquet) is read as ``columns`` say (default: a ``label``
    column, every other column a feature); its features and texts stream to spill files in
    ``scratch_dir`` too (see :mod:`worker.engine.data.tables`). A text table gives a
    :class:`TextDataset`, anything else :class:`DatasetArrays`.

    Raises :class:`DatasetFormatError` (a ``ValueError``) with a message fit for the client.
    """
    fmt = dataset_format(filename)
    limits = limits or ArchiveLimits()
    path = Path(path)
    if fmt in TABLE_FORMATS:
        return decode_table(path, fmt, columns or TableColumns(), limits, scratch_dir)
    if fmt == "npz":
        return load_npz(path, limits)
    if fmt == "zip":
        members = iter_zip_members(path, limits, wanted_member, first=SUBJECTS_FILE)
        return load_image_folder(members, limits, spill_dir=scratch_dir,
                                 expected_images=_zip_image_count(path, limits))
    members = iter_tar_members(path, limits, wanted_member, gzipped=fmt == "tar.gz")
    return load_image_folder(members, limits, spill_dir=scratch_dir)


def _zip_image_count(path: Path, limits: ArchiveLimits) -> int:
    """Image members in the zip's listing: with the first header, the decoded total is known
    before a single image is decoded."""
    with open_zip(path) as zf:
        names = check_zip_listing(zf, path.stat().st_size, limits)
    return sum(1 for name in names if image_location(name) is not None)
