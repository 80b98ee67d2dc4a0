"""ImageFolder archives: ``train/<class>/<file>``, ``test/<class>/<file>``, ``subjects.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from worker.engine.data.archive import ArchiveLimits, DatasetFormatError, Member
from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.images import ImageDecoder, pil_pixel_limit

SPLITS = ("train", "test")
SUBJECTS_FILE = "subjects.csv"
SUBJECTS_HEADER = ["sample_id", "subject"]
_JUNK_NAMES = {"Thumbs.db", "desktop.ini"}
Location = tuple[str, str]  # (split, class)


def _is_junk(name: str, parts: list[str]) -> bool:
    """Files archivers and desktops add on their own: ``__MACOSX/``, ``.DS_Store``, ``._x``..."""
    hidden = name.startswith(".") or "/." in name
    return hidden or parts[0] == "__MACOSX" or parts[-1] in _JUNK_NAMES


def image_location(name: str) -> Location | None:
    """``(split, class)`` of an image member, or None for members the layout ignores."""
    parts = name.split("/")
    if parts[0] not in SPLITS or _is_junk(name, parts):
        return None
    if len(parts) != 3:
        raise DatasetFormatError(f"member {name!r}: expected {parts[0]}/<class>/<file>")
    return parts[0], parts[1]


def wanted_member(name: str) -> bool:
    return name == SUBJECTS_FILE or image_location(name) is not None


def _parse_subjects(data: bytes, ids_train: list[str]) -> list[str | None]:
    """Subjects aligned with ``ids_train`` (None where untagged) from ``sample_id,subject``."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{SUBJECTS_FILE}: not UTF-8 ({exc})") from exc
    rows = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(rows, [])]
    if header != SUBJECTS_HEADER:
        raise DatasetFormatError(f"{SUBJECTS_FILE}: header must be 'sample_id,subject'")
    row_of = {sample_id: row for row, sample_id in enumerate(ids_train)}
    subjects: list[str | None] = [None] * len(ids_train)
    for line, cells in enumerate(rows, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != 2:
            raise DatasetFormatError(f"{SUBJECTS_FILE} line {line}: expected 2 fields")
        sample_id, subject = cells[0].strip(), cells[1].strip()
        if sample_id not in row_of:
            raise DatasetFormatError(
                f"{SUBJECTS_FILE} line {line}: {sample_id!r} is not a training sample")
        if subjects[row_of[sample_id]] is not None:
            raise DatasetFormatError(f"{SUBJECTS_FILE} line {line}: {sample_id!r} listed twice")
        subjects[row_of[sample_id]] = subject or None
    return subjects



def _class_index(locations: list[Location]) -> dict[str, int]:
    """Class names numbered in sorted order, after checking both splits against each other."""
    classes = {split: {cls for where, cls in locations if where == split} for split in SPLITS}
    for split in SPLITS:
        if not classes[split]:
            raise DatasetFormatError(f"no images under {split}/<class>/; an ImageFolder archive "
                                     "needs train/ and test/ at its top level")
    unknown = sorted(classes["test"] - classes["train"])
    if unknown:
        raise DatasetFormatError(f"test classes {unknown} have no training images")
    if len(classes["train"]) < 2:
        raise DatasetFormatError("a dataset needs at least 2 classes")
    return {cls: index for index, cls in enumerate(sorted(classes["train"]))}


@dataclass
class _Decoded:
    names: list[str]
    locations: list[Location]
    images: np.ndarray  # N×H×W×C
    subjects_csv: bytes | None


def _decode_members(members: Iterable[Member], limits: ArchiveLimits) -> _Decoded:
    """Images (with names and locations) in archive order, and the subjects file if any."""
    subjects_csv: bytes | None = None
    locations: list[Location] = []
    decoder = ImageDecoder(limits)
    with pil_pixel_limit(limits.max_image_pixels):
        for member in members:
            location = image_location(member.name)
            if location is not None:
                decoder.add(member.name, member.data)
                locations.append(location)
            elif member.name == SUBJECTS_FILE:
                subjects_csv = member.data
    names, images = decoder.finish()
    return _Decoded(names, locations, images, subjects_csv)


def load_image_folder(members: Iterable[Member], limits: ArchiveLimits) -> DatasetArrays:
    """A dataset from ImageFolder members (already safety-checked by the archive reader)."""
    decoded = _decode_members(members, limits)
    names, locations, images = decoded.names, decoded.locations, decoded.images
    class_index = _class_index(locations)
    # Rows ordered by sample id, so the archive's member order does not matter.
    rows = {split: sorted((row for row, (where, _) in enumerate(locations) if where == split),
                          key=names.__getitem__) for split in SPLITS}
    labels = {split: np.array([class_index[locations[row][1]] for row in rows[split]],
                              dtype=np.int64) for split in SPLITS}
    ids_train = [names[row] for row in rows["train"]]
    return DatasetArrays(
        x_train=images[rows["train"]], y_train=labels["train"],
        x_test=images[rows["test"]], y_test=labels["test"], ids_train=ids_train,
        classes=list(class_index),
        subjects_train=None if decoded.subjects_csv is None
        else _parse_subjects(decoded.subjects_csv, ids_train),
    )
