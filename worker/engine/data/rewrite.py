"""Rewriting a stored upload without some training samples (real erasure of their bytes).

The upload was checked when it arrived, so these readers trust its structure; they still
never extract anything to disk.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from worker.engine.data.archive import normalise_member_name
from worker.engine.data.imagefolder import SUBJECTS_FILE
from worker.engine.data.tables import TABLE_FORMATS, TableColumns, rewrite_table


def rewrite_without(source: Path, fmt: str, drop_ids: set[str], target: Path,
                    table: dict | None = None) -> None:
    """Write ``source`` (an upload of format ``fmt``) to ``target`` minus ``drop_ids``;
    ``table``: a table upload's columns (``TableColumns.as_dict()``, kept with its arrays)."""
    if fmt in TABLE_FORMATS:
        rewrite_table(source, fmt, TableColumns.from_dict(table or {}), drop_ids, target)
    elif fmt == "npz":
        _rewrite_npz(source, drop_ids, target)
    elif fmt == "zip":
        _rewrite_zip(source, drop_ids, target)
    else:
        _rewrite_tar(source, drop_ids, target, gzipped=fmt == "tar.gz")


def _rewrite_npz(source: Path, drop_ids: set[str], target: Path) -> None:
    with np.load(source, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    rows = len(arrays["x_train"])
    ids = (arrays["ids_train"].astype(str) if "ids_train" in arrays
           else np.array([str(i) for i in range(rows)]))
    keep = ~np.isin(ids, sorted(drop_ids))
    # Ids are written out explicitly: row-index ids would otherwise shift after the cut.
    arrays["ids_train"] = ids
    for key in ("x_train", "y_train", "ids_train", "subjects_train"):
        if key in arrays:
            arrays[key] = arrays[key][keep]
    with open(target, "wb") as f:
        np.savez(f, **arrays)


def _filtered_subjects(data: bytes, drop_ids: set[str]) -> bytes:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    kept = [rows[0], *(r for r in rows[1:] if not r or r[0].strip() not in drop_ids)]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(kept)
    return out.getvalue().encode("utf-8")


def _kept(name: str, drop_ids: set[str]) -> bool:
    return normalise_member_name(name) not in drop_ids


def _rewrite_zip(source: Path, drop_ids: set[str], target: Path) -> None:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            if not _kept(info.filename, drop_ids):
                continue
            data = zin.read(info)
            if normalise_member_name(info.filename) == SUBJECTS_FILE:
                data = _filtered_subjects(data, drop_ids)
            zout.writestr(info, data, compress_type=info.compress_type)


def _rewrite_tar(source: Path, drop_ids: set[str], target: Path, *, gzipped: bool) -> None:
    with tarfile.open(source, "r:gz" if gzipped else "r:") as tin, \
            tarfile.open(target, "w:gz" if gzipped else "w") as tout:
        for info in tin:
            if not _kept(info.name, drop_ids):
                continue
            if not info.isfile():
                tout.addfile(info)
                continue
            data = tin.extractfile(info).read()
            if normalise_member_name(info.name) == SUBJECTS_FILE:
                data = _filtered_subjects(data, drop_ids)
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
