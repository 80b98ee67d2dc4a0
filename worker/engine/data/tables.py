"""Tables as datasets: CSV, JSON Lines and Parquet uploads with named columns.

A table's rows are samples. The upload names its columns (:class:`TableColumns`): a label
column, then either one text column (a text dataset, stored by :mod:`worker.engine.data.text`)
or numeric feature columns (a feature dataset: float32 ``N×D``, what an ``.npz`` of features
gives and the MLP consumes); optionally an id, a subject and a split column.

* **Labels** are class names: numbered in sorted order (numerically when every label is an
  integer, so ``1..5`` star ratings are classes 0..4 named ``"1".."5"``), the names kept in
  ``classes``. Every class needs a training row; a label seen only in the test split, or more
  than ``max_classes`` labels, is refused.
* **Split**: a split column's values must be ``train`` or ``test``. Without one, a row is a
  test row when the sha256 of its id, read as a fraction, falls below ``test_fraction``: the
  same row lands in the same split whatever the file's order or length.
* **Ids** default to the row's number in the file (``"0"`` is the first data row); given,
  they must be unique, non-empty text, at most the database's length.

Rows are decoded in streaming batches (CSV and JSON Lines a line at a time, Parquet a record
batch at a time, each line of a text format at most ``max_row_bytes``): features and texts go
to unnamed spill files as they come, so memory holds the labels, ids and subjects (what the
database is given) and one batch. Each limit is checked as soon as it can be: a Parquet
file's row count and uncompressed size from its footer before any row is read, a text
format's row count and decoded size at the row that exceeds them. Every refusal is a
:class:`DatasetFormatError` naming the column (and the row, counted from 0 as the first data
row, with the line for CSV and JSON Lines). Nothing is unpickled: CSV and JSON are parsed by
the standard library, Parquet by pyarrow, which reads no code from a file.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import tempfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.engine.data.archive import (
    RATIO_FLOOR_BYTES,
    ArchiveLimits,
    DatasetFormatError,
    check_text,
)
from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.text import TextDataset, TextSpill

TABLE_FORMATS = ("csv", "jsonl", "parquet")
SPLIT_VALUES = ("train", "test")
BATCH_ROWS = 4096


@dataclass(frozen=True)
class TableColumns:
    """Which column is what. Without ``text`` and ``features``, every column that is not the
    label, id, subject or split column is a feature."""

    label: str = "label"
    text: str | None = None
    features: tuple[str, ...] | None = None
    id: str | None = None
    subject: str | None = None
    split: str | None = None
    test_fraction: float = 0.2

    def roles(self) -> dict[str, str]:
        """Column name -> role, for the columns named explicitly."""
        named = {"label_column": self.label, "text_column": self.text, "id_column": self.id,
                 "subject_column": self.subject, "split_column": self.split}
        return {role: name for role, name in named.items() if name is not None}

    def resolved(self, available: list[str]) -> TableColumns:
        """These columns checked against the file's (``available``), features filled in."""
        if self.text is not None and self.features:
            raise DatasetFormatError("name either text_column or feature_columns, not both")
        if not 0 < self.test_fraction < 1:
            raise DatasetFormatError("test_fraction must lie strictly between 0 and 1")
        used: dict[str, str] = {}
        for role, name in [*self.roles().items(),
                           *(("feature_columns", f) for f in self.features or ())]:
            if name in used and role == used[name] == "feature_columns":
                raise DatasetFormatError(f"feature_columns: {name!r} is listed twice")
            if name in used:
                raise DatasetFormatError(f"column {name!r} is named as both {used[name]} and "
                                         f"{role}")
            used[name] = role
        missing = [f"{role} {name!r}" for name, role in used.items() if name not in available]
        if missing:
            shown = ", ".join(repr(c) for c in available[:20])
            raise DatasetFormatError(f"missing column: {'; '.join(missing)} (the file's "
                                     f"columns: {shown}{' ...' if len(available) > 20 else ''})",
                                     column=next(n for n in used if n not in available))
        features = self.features
        if self.text is None and not features:
            features = tuple(c for c in available if c not in used)
            if not features:
                raise DatasetFormatError("feature_columns: the file has no column left to use "
                                         "as a feature; name a text_column or feature columns")
        return TableColumns(label=self.label, text=self.text, features=features, id=self.id,
                            subject=self.subject, split=self.split,
                            test_fraction=self.test_fraction)

    def as_dict(self) -> dict:
        return {"label": self.label, "text": self.text,
                "features": None if self.features is None else list(self.features),
                "id": self.id, "subject": self.subject, "split": self.split,
                "test_fraction": self.test_fraction}

    @classmethod
    def from_dict(cls, data: dict) -> TableColumns:
        features = data.get("features")
        return cls(**(data | {"features": None if features is None else tuple(features)}))

    def split_of(self, sample_id: str, value) -> str:
        """The split of a row whose id is ``sample_id`` and split cell ``value`` (checked)."""
        if self.split is not None:
            return value.strip().lower()
        fraction = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big")
        return "test" if fraction < int(self.test_fraction * 2**64) else "train"

    @property
    def wanted(self) -> list[str]:
        return [*self.roles().values(), *(self.features or ())]


Where = Callable[[int], str]  # row number -> "row 7 (line 9)"


def _row_text(row: int) -> str:
    return f"row {row}"


def _locating(role: str):
    """A ``_Decoder`` check of one cell (``row`` its second-last argument): errors it raises
    name the column that ``role`` is and the row, for the problem's extension members."""

    def wrap(check):
        @functools.wraps(check)
        def located(self, *args):
            try:
                return check(self, *args)
            except DatasetFormatError as exc:
                if exc.column is None:
                    exc.column, exc.row = getattr(self.c, role), args[-2]
                raise

        return located

    return wrap


class _Decoder:
    """Takes a table's rows batch by batch; :meth:`finish` makes the dataset."""

    def __init__(self, columns: TableColumns, limits: ArchiveLimits, spill_dir: Path | None):
        self.c, self.limits, self.spill_dir = columns, limits, spill_dir
        self.rows = 0
        self.codes = {split: array("i") for split in SPLIT_VALUES}
        self.label_codes: dict[str, int] = {}
        self.first_test_row: dict[int, tuple[int, str]] = {}  # label code -> first test row
        self.seen_in_train: set[int] = set()
        self.ids_train: list[str] = []
        self.id_set: set[str] = set()
        self.subjects: list[str | None] = []
        self.decoded_bytes = 0
        self.texts = ({split: TextSpill(spill_dir) for split in SPLIT_VALUES}
                      if columns.text is not None else None)
        self.features = (None if columns.text is not None else
                         {split: tempfile.TemporaryFile(dir=spill_dir)  # noqa: SIM115
                          for split in SPLIT_VALUES})
        self.feature_rows = dict.fromkeys(SPLIT_VALUES, 0)

    def close(self) -> None:
        for spill in (self.texts or {}).values():
            spill.close()
        for spill in (self.features or {}).values():
            spill.close()

    # --- one batch ---------------------------------------------------------------------------

    def add(self, batch: dict[str, Any], count: int, where: Where = _row_text) -> None:
        first = self.rows
        self.rows += count
        if self.rows > self.limits.max_rows:
            raise DatasetFormatError(f"{where(self.limits.max_rows)}: more than "
                                     f"{self.limits.max_rows} rows")
        ids = self._ids(batch, first, count, where)
        splits = self._splits(batch, ids, first, where)
        features = self._features(batch, first, count, where) if self.features else None
        label_column = batch[self.c.label]
        text_column = batch[self.c.text] if self.c.text is not None else None
        subject_column = batch[self.c.subject] if self.c.subject is not None else None
        for i in range(count):
            row = first + i
            split = splits[i]
            code = self._label(label_column[i], row, where)
            self.codes[split].append(code)
            if split == "train":
                self.seen_in_train.add(code)
                self._add_id(ids[i], row, where)
                if subject_column is not None:
                    self.subjects.append(self._subject(subject_column[i], row, where))
            elif code not in self.first_test_row:
                self.first_test_row[code] = (row, where(row))
            if text_column is not None:
                self._text(text_column[i], split, row, where)
        if features is not None:
            train = np.fromiter((s == "train" for s in splits), dtype=bool, count=count)
            for split, mask in (("train", train), ("test", ~train)):
                block = features[mask]
                self.features[split].write(np.ascontiguousarray(block, dtype="<f4").data)
                self.feature_rows[split] += len(block)

    def _ids(self, batch, first: int, count: int, where: Where) -> list[str]:
        if self.c.id is None:
            return [str(first + i) for i in range(count)]
        ids = []
        for i, value in enumerate(batch[self.c.id]):
            ids.append(self._id(value, first + i, where))
        return ids

    @_locating("id")
    def _id(self, value, row: int, where: Where) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DatasetFormatError(f"id_column {self.c.id!r}, {where(row)}: an id must be "
                                     f"text or an integer, not {_shown(value)}")
        text = str(value).strip()
        if not text:
            raise DatasetFormatError(f"id_column {self.c.id!r}, {where(row)}: empty id")
        check_text(f"id_column {self.c.id!r}, {where(row)}: id", text,
                   self.limits.max_id_chars)
        return text

    @_locating("id")
    def _add_id(self, sample_id: str, row: int, where: Where) -> None:
        if sample_id in self.id_set:
            raise DatasetFormatError(f"id_column {self.c.id!r}, {where(row)}: id "
                                     f"{sample_id!r} appears more than once")
        self.id_set.add(sample_id)
        self.ids_train.append(sample_id)

    def _splits(self, batch, ids: list[str], first: int, where: Where) -> list[str]:
        if self.c.split is None:
            return [self.c.split_of(i, None) for i in ids]
        splits = []
        for i, value in enumerate(batch[self.c.split]):
            split = value.strip().lower() if isinstance(value, str) else None
            if split not in SPLIT_VALUES:
                raise DatasetFormatError(
                    f"split_column {self.c.split!r}, {where(first + i)}: unknown split value "
                    f"{_shown(value)}; expected 'train' or 'test'", column=self.c.split,
                    row=first + i)
            splits.append(split)
        return splits

    @_locating("label")
    def _label(self, value, row: int, where: Where) -> int:
        if isinstance(value, str):
            key = value.strip()
        elif isinstance(value, int) and not isinstance(value, bool):
            key = str(value)
        else:
            raise DatasetFormatError(f"label_column {self.c.label!r}, {where(row)}: a label must "
                                     f"be text or an integer, not {_shown(value)}")
        code = self.label_codes.get(key)
        if code is None:
            if not key:
                raise DatasetFormatError(f"label_column {self.c.label!r}, {where(row)}: "
                                         "empty label")
            check_text(f"label_column {self.c.label!r}, {where(row)}: label", key, 200)
            if len(self.label_codes) >= self.limits.max_classes:
                raise DatasetFormatError(f"label_column {self.c.label!r}, {where(row)}: more "
                                         f"than {self.limits.max_classes} distinct labels",
                                         column=self.c.label, row=row)
            code = self.label_codes[key] = len(self.label_codes)
        return code

    @_locating("subject")
    def _subject(self, value, row: int, where: Where) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise DatasetFormatError(f"subject_column {self.c.subject!r}, {where(row)}: a "
                                     f"subject must be text, not {_shown(value)}")
        subject = value.strip()
        check_text(f"subject_column {self.c.subject!r}, {where(row)}: subject", subject,
                   self.limits.max_subject_chars)
        return subject or None

    @_locating("text")
    def _text(self, value, split: str, row: int, where: Where) -> None:
        what = f"text_column {self.c.text!r}, {where(row)}"
        if not isinstance(value, str):
            raise DatasetFormatError(f"{what}: a text must be a string, not {_shown(value)}")
        if not value.strip():
            raise DatasetFormatError(f"{what}: empty text", column=self.c.text, row=row)
        if len(value) > self.limits.max_text_chars:
            raise DatasetFormatError(f"{what}: text of {len(value)} characters, more than "
                                     f"{self.limits.max_text_chars}", column=self.c.text,
                                     row=row)
        if "\x00" in value:
            raise DatasetFormatError(f"{what}: NUL characters are not allowed")
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            raise DatasetFormatError(f"{what}: not valid Unicode text") from None
        self.decoded_bytes += len(encoded)
        if self.decoded_bytes > self.limits.max_decoded_bytes:
            raise DatasetFormatError(f"{what}: texts exceed {self.limits.max_decoded_bytes} "
                                     "bytes in all")
        self.texts[split].add(encoded)

    def _features(self, batch, first: int, count: int, where: Where) -> np.ndarray:
        features = self.c.features
        self.decoded_bytes += count * len(features) * 4
        if self.decoded_bytes > self.limits.max_decoded_bytes:
            raise DatasetFormatError(
                f"feature_columns, {where(first + count - 1)}: {len(features)} features a row "
                f"exceed {self.limits.max_decoded_bytes} bytes as float32")
        out = np.empty((count, len(features)), dtype=np.float32)
        for j, name in enumerate(features):
            out[:, j] = _numbers(batch[name], name, first, where)
        return out

    # --- the dataset ---------------------------------------------------------------------------

    def finish(self) -> DatasetArrays | TextDataset:
        column = f"label_column {self.c.label!r}"
        for split in SPLIT_VALUES:
            if not self.codes[split]:
                how = (f"split_column {self.c.split!r}" if self.c.split is not None
                       else f"test_fraction {self.c.test_fraction:g}")
                raise DatasetFormatError(f"no {split} rows ({how}); a dataset needs both "
                                         "splits")
        if len(self.seen_in_train) < 2:
            raise DatasetFormatError(f"{column}: a dataset needs at least 2 classes in its "
                                     "train split")
        names = sorted(self.label_codes, key=self.label_codes.__getitem__)
        for code, (row, where) in sorted(self.first_test_row.items(), key=lambda kv: kv[1]):
            if code not in self.seen_in_train:
                raise DatasetFormatError(f"{column}, {where}: label {names[code]!r} has no "
                                         "training row", column=self.c.label, row=row)
        order = _class_order(names)
        index = np.empty(len(names), dtype=np.int64)
        index[order] = np.arange(len(order))
        classes = [names[code] for code in order]
        y = {split: index[np.frombuffer(self.codes[split], dtype=np.int32)]
             if len(self.codes[split]) else np.zeros(0, dtype=np.int64)
             for split in SPLIT_VALUES}
        if len(classes) != len(self.seen_in_train):  # only test rows had it: refused above
            raise DatasetFormatError(f"{column}: every class needs a training row")
        subjects = self.subjects if self.c.subject is not None else None
        if self.texts is not None:
            texts, self.texts = self.texts, None  # the dataset owns the spills now
            return TextDataset(texts=texts, y_train=y["train"], y_test=y["test"],
                               ids_train=self.ids_train, classes=classes,
                               subjects_train=subjects, text_column=self.c.text,
                               table=self.c.as_dict())
        x = {}
        for split in SPLIT_VALUES:
            spill = self.features[split]
            spill.flush()
            x[split] = np.memmap(spill, dtype="<f4", mode="r",
                                 shape=(self.feature_rows[split], len(self.c.features)))
        return DatasetArrays(x_train=x["train"], y_train=y["train"], x_test=x["test"],
                             y_test=y["test"], ids_train=self.ids_train, classes=classes,
                             subjects_train=subjects, table=self.c.as_dict())


def _class_order(names: list[str]) -> list[int]:
    """Codes in class order: numeric when every name is an integer written plainly."""
    def plain_int(name: str) -> bool:
        digits = name[1:] if name.startswith("-") else name
        return digits.isdigit() and digits.isascii() and (digits == "0" or digits[0] != "0")

    codes = range(len(names))
    if all(plain_int(name) for name in names):
        return sorted(codes, key=lambda code: int(names[code]))
    return sorted(codes, key=names.__getitem__)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers(values, column: str, first: int, where: Where) -> np.ndarray:
    """A feature column's values as float32, refusing text, booleans, nulls and non-finite
    numbers, naming the first such row."""
    numbers = None
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        numbers = values.astype(np.float64)
    elif isinstance(values, np.ndarray) and values.dtype.kind == "U":  # CSV: parsed in C
        try:
            numbers = values.astype(np.float64)
        except ValueError:
            values = values.tolist()  # the loop below names the first bad cell
    if numbers is None:
        numbers = np.empty(len(values), dtype=np.float64)
        for i, value in enumerate(values):
            try:
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    raise TypeError  # null, a list, an object, true/false
                numbers[i] = float(value)
            except (TypeError, ValueError, OverflowError):
                raise DatasetFormatError(f"feature column {column!r}, {where(first + i)}: "
                                         f"not a number: {_shown(value)}", column=column,
                                         row=first + i) from None
    with np.errstate(over="ignore"):  # an overflow is refused just below
        as_float32 = numbers.astype(np.float32)
    bad = ~np.isfinite(as_float32)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetFormatError(f"feature column {column!r}, {where(first + i)}: "
                                 f"{numbers[i]!r} is not a finite float32 number",
                                 column=column, row=first + i)
    return as_float32


# --- readers ---------------------------------------------------------------------------------

def decode_table(path: Path, fmt: str, columns: TableColumns, limits: ArchiveLimits,
                 spill_dir: Path | None = None) -> DatasetArrays | TextDataset:
    """The dataset a CSV, JSON Lines or Parquet upload holds (see the module's doc)."""
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}
    if fmt not in readers:
        raise DatasetFormatError(f"not a table format: {fmt}")
    path = Path(path)
    if path.stat().st_size == 0:
        raise DatasetFormatError("the file is empty")
    decoder: _Decoder | None = None
    try:
        for item in readers[fmt](path, columns, limits):
            if isinstance(item, TableColumns):
                decoder = _Decoder(item, limits, spill_dir)
                continue
            batch, count, where = item
            decoder.add(batch, count, where)
        if decoder is None or decoder.rows == 0:
            raise DatasetFormatError("the table has no rows")
        return decoder.finish()
    finally:
        if decoder is not None:
            decoder.close()


def _bounded_lines(stream, limit: int, what: str) -> Iterator[str]:
    """``stream``'s lines, refusing one longer than ``limit`` before reading past it."""
    number = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit:
            raise DatasetFormatError(f"line {number}: longer than {limit} {what} "
                                     "(max_row_bytes)")
        yield line


def _read_csv(path: Path, columns: TableColumns, limits: ArchiveLimits):
    csv.field_size_limit(max(csv.field_size_limit(), limits.max_row_bytes))
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            reader = csv.reader(_bounded_lines(stream, limits.max_row_bytes, "characters"),
                                strict=True)
            header = [cell.strip() for cell in next(reader, [])]
            if not any(header):
                raise DatasetFormatError("line 1: the header row names no columns")
            _check_header(header)
            resolved = columns.resolved(header)
            yield resolved
            positions = {name: header.index(name) for name in resolved.wanted}
            rows: list[list[str]] = []
            lines: list[int] = []
            first = 0
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # a blank line
                if len(cells) != len(header):
                    raise DatasetFormatError(
                        f"row {first + len(rows)} (line {reader.line_num}): "
                        f"{len(cells)} fields but the header has {len(header)}")
                rows.append(cells)
                lines.append(reader.line_num)
                if len(rows) == BATCH_ROWS:
                    yield _text_batch(_csv_columns(rows, positions, resolved), lines, first)
                    first += len(rows)
                    rows, lines = [], []
            if rows:
                yield _text_batch(_csv_columns(rows, positions, resolved), lines, first)
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetFormatError(f"not a readable CSV file: {exc}") from None


def _csv_columns(rows: list[list[str]], positions: dict[str, int],
                 columns: TableColumns) -> dict[str, Any]:
    """A CSV batch by column; feature columns as numpy strings, which numpy parses in C."""
    features = set(columns.features or ())
    return {name: np.array([cells[i] for cells in rows]) if name in features
            else [cells[i] for cells in rows] for name, i in positions.items()}


def _text_batch(batch: dict[str, list], lines: list[int], first: int):
    """A batch of a line-based format, with a ``where`` that names row and line."""

    def where(row: int) -> str:
        if 0 <= row - first < len(lines):
            return f"row {row} (line {lines[row - first]})"
        return f"row {row}"

    return batch, len(lines), where


def _check_header(header: list[str]) -> None:
    seen = set()
    for name in header:
        if not name:
            raise DatasetFormatError("line 1: a column has no name")
        if name in seen:
            raise DatasetFormatError(f"line 1: column {name!r} appears twice")
        seen.add(name)


def _read_jsonl(path: Path, columns: TableColumns, limits: ArchiveLimits):
    resolved: TableColumns | None = None
    rows: list[dict] = []
    lines: list[int] = []
    first = 0
    with open(path, "rb") as stream:
        for number, raw in enumerate(_bounded_lines(stream, limits.max_row_bytes, "bytes"),
                                     start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetFormatError(f"line {number}: not UTF-8 ({exc.reason})") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise DatasetFormatError(f"line {number}: not a JSON value "
                                         f"({str(exc)[:100]})") from None
            if not isinstance(record, dict):
                raise DatasetFormatError(f"line {number}: expected a JSON object, got "
                                         f"{type(record).__name__}")
            if resolved is None:
                resolved = columns.resolved(list(record))
                yield resolved
            for name in resolved.wanted:
                if name not in record:
                    raise DatasetFormatError(f"missing column: {_role(resolved, name)} "
                                             f"{name!r}, row {first + len(rows)} (line {number})",
                                             column=name, row=first + len(rows))
            rows.append(record)
            lines.append(number)
            if len(rows) == BATCH_ROWS:
                yield _text_batch({name: [r[name] for r in rows] for name in resolved.wanted},
                                  lines, first)
                first += len(rows)
                rows, lines = [], []
    if rows:
        yield _text_batch({name: [r[name] for r in rows] for name in resolved.wanted},
                          lines, first)


def _role(columns: TableColumns, name: str) -> str:
    return next((role for role, n in columns.roles().items() if n == name), "feature column")


def _read_parquet(path: Path, columns: TableColumns, limits: ArchiveLimits):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        meta, schema = parquet.metadata, parquet.schema_arrow
        uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetFormatError(f"not a readable Parquet file: {str(exc)[:200]}") from None
    if meta.num_rows > limits.max_rows:
        raise DatasetFormatError(f"{meta.num_rows} rows, more than {limits.max_rows}")
    if uncompressed > limits.max_bytes:
        raise DatasetFormatError(f"the table holds {uncompressed} bytes uncompressed, more "
                                 f"than {limits.max_bytes}")
    if uncompressed > max(RATIO_FLOOR_BYTES, limits.max_ratio * path.stat().st_size):
        raise DatasetFormatError(f"the table expands more than {limits.max_ratio:g}x; refusing "
                                 "a possible decompression bomb")
    names = list(schema.names)
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise DatasetFormatError(f"column {duplicated[0]!r} appears more than once",
                                 column=duplicated[0])
    resolved = columns.resolved(names)
    _check_parquet_types(schema, resolved)
    if resolved.features:
        decoded = meta.num_rows * len(resolved.features) * 4
        if decoded > limits.max_decoded_bytes:
            raise DatasetFormatError(f"feature_columns: {meta.num_rows} rows of "
                                     f"{len(resolved.features)} features exceed "
                                     f"{limits.max_decoded_bytes} bytes as float32")
    yield resolved
    first = 0
    try:
        for record_batch in parquet.iter_batches(batch_size=BATCH_ROWS,
                                                 columns=resolved.wanted):
            batch = {}
            for name in resolved.wanted:
                column = record_batch.column(name)
                if column.null_count:
                    row = first + int(np.flatnonzero(column.is_null().to_numpy(
                        zero_copy_only=False))[0])
                    if name != resolved.subject:
                        raise DatasetFormatError(f"{_role(resolved, name)} {name!r}, row "
                                                 f"{row}: null value", column=name, row=row)
                if name in (resolved.features or ()) and not column.null_count:
                    batch[name] = column.to_numpy(zero_copy_only=False)
                else:
                    batch[name] = column.to_pylist()
            yield batch, record_batch.num_rows, _row_text
            first += record_batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DatasetFormatError(f"not a readable Parquet file: {str(exc)[:200]}") from None


def _check_parquet_types(schema, columns: TableColumns) -> None:
    import pyarrow as pa

    def kind(name: str) -> str:
        t = schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string"
        if pa.types.is_integer(t):
            return "integer"
        if pa.types.is_floating(t):
            return "float"
        return str(t)

    wanted = {columns.label: ("string", "integer"), columns.id: ("string", "integer"),
              columns.text: ("string",), columns.subject: ("string",),
              columns.split: ("string",)}
    wanted |= {name: ("integer", "float") for name in columns.features or ()}
    for name, kinds in wanted.items():
        if name is None:
            continue
        found = kind(name)
        if found not in kinds:
            raise DatasetFormatError(f"{_role(columns, name)} {name!r}: a column of "
                                     f"{' or '.join(kinds)} values, not {found}", column=name)


def table_format(filename: str) -> str | None:
    lower = filename.lower()
    for suffix, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".parquet", "parquet")):
        if lower.endswith(suffix):
            return fmt
    return None


__all__ = ["TABLE_FORMATS", "TableColumns", "decode_table", "table_format"]


# --- erasure ---------------------------------------------------------------------------------

def rewrite_table(source: Path, fmt: str, columns: TableColumns, drop_ids: set[str],
                  target: Path) -> None:
    """Write the table upload ``source`` to ``target`` without the training rows whose ids
    are in ``drop_ids`` (the upload was checked when it came: its structure is trusted).
    Without an id column, ids are row numbers in the original upload, so they do not
    describe the rows of the rewritten file."""

    def dropped(row: int, sample_id, split) -> bool:
        sample_id = str(row) if columns.id is None else str(sample_id).strip()
        return columns.split_of(sample_id, split) == "train" and sample_id in drop_ids

    if fmt == "csv":
        with open(source, encoding="utf-8-sig", newline="") as fin, \
                open(target, "w", encoding="utf-8", newline="") as fout:
            reader, writer = csv.reader(fin), csv.writer(fout)
            header = next(reader)
            names = [cell.strip() for cell in header]
            writer.writerow(header)
            at = {c: names.index(c) for c in (columns.id, columns.split) if c is not None}
            row = 0
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if not dropped(row, cells[at[columns.id]] if columns.id else None,
                               cells[at[columns.split]] if columns.split else None):
                    writer.writerow(cells)
                row += 1
    elif fmt == "jsonl":
        with open(source, "rb") as fin, open(target, "wb") as fout:
            row = 0
            for number, raw in enumerate(fin, start=1):
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                if not text.strip():
                    continue
                record = json.loads(text)
                if not dropped(row, record.get(columns.id) if columns.id else None,
                               record.get(columns.split) if columns.split else None):
                    fout.write(raw if raw.endswith(b"\n") else raw + b"\n")
                row += 1
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(source)
        with pq.ParquetWriter(target, parquet.schema_arrow) as writer:
            row = 0
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                ids = batch.column(columns.id).to_pylist() if columns.id else [None] * len(batch)
                splits = (batch.column(columns.split).to_pylist() if columns.split
                          else [None] * len(batch))
                keep = [not dropped(row + i, sample_id, split)
                        for i, (sample_id, split) in enumerate(zip(ids, splits, strict=True))]
                writer.write_table(pa.Table.from_batches([batch.filter(pa.array(keep))]))
                row += len(batch)
