"""ImageFolder archives: ``train/<class>/<file>``, ``test/<class>/<file>``, ``subjects.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.engine.data.archive import ArchiveLimits, DatasetFormatError, Member, check_text
from worker.engine.data.arrays import BLOCK_BYTES, DatasetArrays
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


SubjectRow = tuple[int, str, str]  # (line, sample_id, subject)


def _read_subjects(data: bytes, limits: ArchiveLimits) -> list[SubjectRow]:
    """The ``sample_id,subject`` rows, checked as soon as the file is read (a zip reads it
    first): a subject the database cannot hold fails before any image is decoded."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{SUBJECTS_FILE}: not UTF-8 ({exc})") from exc
    rows = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(rows, [])]
    if header != SUBJECTS_HEADER:
        raise DatasetFormatError(f"{SUBJECTS_FILE}: header must be 'sample_id,subject'")
    parsed = []
    for line, cells in enumerate(rows, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != 2:
            raise DatasetFormatError(f"{SUBJECTS_FILE} line {line}: expected 2 fields")
        subject = cells[1].strip()
        check_text(f"{SUBJECTS_FILE} line {line}: subject", subject, limits.max_subject_chars)
        parsed.append((line, cells[0].strip(), subject))
    return parsed


def _align_subjects(rows: list[SubjectRow], ids_train: list[str]) -> list[str | None]:
    """Subjects aligned with ``ids_train``, None where untagged."""
    row_of = {sample_id: row for row, sample_id in enumerate(ids_train)}
    subjects: list[str | None] = [None] * len(ids_train)
    for line, sample_id, subject in rows:
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
class _Manifest:
    names: list[str]  # of the images, in archive order
    locations: list[Location]
    subjects: list[SubjectRow] | None


def _decode_members(members: Iterable[Member], limits: ArchiveLimits,
                    decoder: ImageDecoder) -> _Manifest:
    """Every image to ``decoder``, in archive order; their names and locations, and the subjects
    file if any."""
    subjects: list[SubjectRow] | None = None
    locations: list[Location] = []
    with pil_pixel_limit(limits.max_image_pixels):
        for member in members:
            location = image_location(member.name)
            if location is not None:
                decoder.add(member.name, member.data)
                locations.append(location)
            elif member.name == SUBJECTS_FILE:
                subjects = _read_subjects(member.data, limits)
    return _Manifest(decoder.names, locations, subjects)


def _gather(decoder: ImageDecoder, rows: list[int]) -> np.ndarray:
    """The decoded images ``rows``, into one array of their final size, a block at a time."""
    out = np.empty((len(rows), *decoder.spec.shape), dtype=np.uint8)
    step = max(1, BLOCK_BYTES // decoder.spec.nbytes)
    for start in range(0, len(rows), step):
        out[start : start + step] = decoder.read(rows[start : start + step])
    return out


def load_image_folder(members: Iterable[Member], limits: ArchiveLimits, *,
                      expected_images: int | None = None,
                      spill_dir: Path | None = None) -> DatasetArrays:
    """A dataset from ImageFolder members (already safety-checked by the archive reader).

    ``expected_images``: how many image members the archive holds, when its listing tells;
    ``spill_dir``: where decoded pixels wait, in an unnamed file, until they are sorted into
    the arrays (None: the system's temporary directory).
    """
    with ImageDecoder(limits, expected_images=expected_images, spill_dir=spill_dir) as decoder:
        manifest = _decode_members(members, limits, decoder)
        names, locations = manifest.names, manifest.locations
        class_index = _class_index(locations)
        # Rows ordered by sample id, so the archive's member order does not matter.
        rows = {split: sorted((row for row, (where, _) in enumerate(locations)
                               if where == split), key=names.__getitem__) for split in SPLITS}
        labels = {split: np.array([class_index[locations[row][1]] for row in rows[split]],
                                  dtype=np.int64) for split in SPLITS}
        ids_train = [names[row] for row in rows["train"]]
        subjects = (None if manifest.subjects is None
                    else _align_subjects(manifest.subjects, ids_train))
        return DatasetArrays(
            x_train=_gather(decoder, rows["train"]), y_train=labels["train"],
            x_test=_gather(decoder, rows["test"]), y_test=labels["test"],
            ids_train=ids_train, classes=list(class_index), subjects_train=subjects,
        )
