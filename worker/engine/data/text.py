"""Text datasets: their raw strings stored without pickle, and read back by row.

**Storage.** A text dataset's decoded blob (``Dataset.arrays_blob``, as for any dataset) is a
safetensors file holding, per split ``train`` and ``test``:

* ``text_<split>``: ``U8 [B]``, every row's text as UTF-8, concatenated;
* ``text_<split>_offsets``: ``I64 [N+1]``, row ``i`` being bytes ``offsets[i]:offsets[i+1]``;
* ``y_<split>``: ``I64 [N]``, class indices (names in ``classes``, numbered in sorted order);

and the metadata ``kind = "text"``, ``classes``, ``ids_train`` and ``subjects_train`` (JSON),
``text_column``. Nothing in it is code: it is read with plain positioned reads and UTF-8
decoding. Its ``Dataset.input_shape`` is ``[]``: a text has no fixed shape before a
tokenizer gives it one.

**Reading (the interface for models that tokenize).** ::

    from worker.engine.data.text import TextRows, is_text_dataset

    if is_text_dataset(path):                       # path = store.path(dataset.arrays_blob)
        with TextRows.open(path) as rows:
            rows.num_train, rows.num_test, rows.classes     # sizes and class names
            rows.y_train, rows.y_test                       # int64 numpy labels, in memory
            texts = rows.texts("train", [3, 1, 4])          # list[str], in the order asked
            texts, labels = rows.batch("test", range(100))  # the same, with their labels
            for row_numbers, texts, labels in rows.iter_batches("train", batch_size=512):
                ...                                         # every row (or those passed)

Row numbers are those of the dataset's samples (``Sample.row`` for the train split, what a
job's ``forget_idx``/``retain_idx`` hold) and never change: erasure empties an erased row's
text (``""``) in a new blob instead of removing the row. Memory is the offsets (8 bytes a
row) and labels, plus the texts asked for. The blob is content addressed, so ``(its sha256,
a tokenizer's identity)`` is a sound cache key for token ids: an erasure makes a new blob,
hence a new key, and the tokens of erased text can never be served from a cache.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker.engine.data.arrays import write_safetensors
from worker.engine.data.loader import StoredArray, _LazyJsonList, read_header, row_numbers

TEXT_KIND = "text"
SPLITS = ("train", "test")


class TextSpill:
    """Texts appended one at a time to an unnamed file; their offsets kept in memory."""

    def __init__(self, spill_dir: Path | None = None):
        self._file = tempfile.TemporaryFile(dir=spill_dir)  # noqa: SIM115 - closed in close()
        self._ends: list[int] = []
        self.total_bytes = 0

    def add(self, encoded: bytes) -> None:
        self._file.write(encoded)
        self.total_bytes += len(encoded)
        self._ends.append(self.total_bytes)

    def __len__(self) -> int:
        return len(self._ends)

    def offsets(self) -> np.ndarray:
        return np.array([0, *self._ends], dtype=np.int64)

    def data(self) -> np.ndarray:
        """The bytes as a read-only map of the spill file (an empty array if none)."""
        self._file.flush()
        if self.total_bytes == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(self._file, dtype=np.uint8, mode="r", shape=(self.total_bytes,))

    def close(self) -> None:
        self._file.close()


@dataclass
class TextDataset:
    """A decoded text upload before it is stored: texts in spill files, the rest in memory.
    Has the attributes the dataset service reads of :class:`DatasetArrays`."""

    texts: dict[str, TextSpill]
    y_train: np.ndarray
    y_test: np.ndarray
    ids_train: list[str]
    classes: list[str]
    subjects_train: list[str | None] | None = None
    text_column: str = "text"
    table: dict | None = None  # the upload's TableColumns, for erasure's rewrite of it
    input_shape: tuple[int, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def save(self, path: Path) -> None:
        tensors = {}
        for split in SPLITS:
            tensors[f"text_{split}"] = self.texts[split].data()
            tensors[f"text_{split}_offsets"] = self.texts[split].offsets()
        tensors["y_train"] = self.y_train.astype(np.int64)
        tensors["y_test"] = self.y_test.astype(np.int64)
        write_safetensors(Path(path), tensors, {
            "kind": TEXT_KIND, "classes": json.dumps(self.classes),
            "ids_train": json.dumps(self.ids_train),
            "subjects_train": json.dumps(self.subjects_train),
            "text_column": self.text_column, "table": json.dumps(self.table)})

    def close(self) -> None:
        for spill in self.texts.values():
            spill.close()


def is_text_dataset(path: Path) -> bool:
    """Whether the decoded blob at ``path`` is a text dataset (else :class:`DatasetArrays`)."""
    header, _ = read_header(Path(path))
    return (header.get("__metadata__") or {}).get("kind") == TEXT_KIND


class TextRows:
    """A stored text dataset, its strings read by row number (see the module's doc)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        header, start = read_header(self.path)
        meta = header.get("__metadata__") or {}
        if meta.get("kind") != TEXT_KIND:
            raise ValueError(f"{path}: not a text dataset")
        self.classes: list[str] = json.loads(meta["classes"])
        self.text_column: str = meta.get("text_column", "text")
        self.table: dict | None = json.loads(meta.get("table", "null"))
        self.ids_train: Sequence[str] = _LazyJsonList(meta.get("ids_train", "[]"))
        subjects = meta.get("subjects_train", "null")
        self.subjects_train = None if subjects == "null" else _LazyJsonList(subjects)
        self._bytes: dict[str, StoredArray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        for split in SPLITS:
            offsets = StoredArray(self.path, f"text_{split}_offsets", header, start)
            self._offsets[split] = offsets.take(np.arange(len(offsets)))
            offsets.close()
            y = StoredArray(self.path, f"y_{split}", header, start)
            labels[split] = y.take(np.arange(len(y)))
            y.close()
            self._bytes[split] = StoredArray(self.path, f"text_{split}", header, start)
        self.y_train, self.y_test = labels["train"], labels["test"]

    @classmethod
    def open(cls, path: Path) -> TextRows:
        return cls(path)

    def __enter__(self) -> TextRows:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for stored in self._bytes.values():
            stored.close()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        return len(self.y_test)

    def num_rows(self, split: str) -> int:
        return len(self._offsets[_split(split)]) - 1

    def labels(self, split: str, rows) -> np.ndarray:
        """Class indices of ``rows`` (int64)."""
        y = self.y_train if _split(split) == "train" else self.y_test
        return y[_as_rows(rows, len(y))]

    def texts(self, split: str, rows) -> list[str]:
        """The texts of ``rows`` (row numbers in any order, repeats allowed; a slice, a range,
        a mask, an array or a tensor), in that order."""
        split = _split(split)
        wanted = _as_rows(rows, self.num_rows(split))
        offsets, stored = self._offsets[split], self._bytes[split]
        unique, inverse = np.unique(wanted, return_inverse=True)
        texts: list[str] = []
        # Runs of consecutive rows are one read each.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for run in np.split(unique, breaks):
            if not len(run):
                continue
            first, last = int(run[0]), int(run[-1])
            begin, end = int(offsets[first]), int(offsets[last + 1])
            buffer = np.empty(end - begin, dtype=np.uint8)
            stored._read_into(buffer, stored.offset + begin)
            raw = buffer.tobytes()
            for row in range(first, last + 1):
                texts.append(raw[offsets[row] - begin : offsets[row + 1] - begin].decode("utf-8"))
        return [texts[i] for i in inverse.reshape(-1)]

    def batch(self, split: str, rows) -> tuple[list[str], np.ndarray]:
        """``(texts, labels)`` of ``rows``."""
        wanted = _as_rows(rows, self.num_rows(_split(split)))
        return self.texts(split, wanted), self.labels(split, wanted)

    def iter_batches(self, split: str, rows: Iterable[int] | None = None,
                     batch_size: int = 512) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """``(row_numbers, texts, labels)`` for ``rows`` (default: every row of the split), in
        order, ``batch_size`` rows at a time."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        count = self.num_rows(_split(split))
        wanted = np.arange(count) if rows is None else _as_rows(rows, count)
        for start in range(0, len(wanted), batch_size):
            chunk = wanted[start : start + batch_size]
            texts, labels = self.batch(split, chunk)
            yield chunk, texts, labels


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return split


def _as_rows(rows, count: int) -> np.ndarray:
    numbers = row_numbers(rows, count)
    numbers = np.array([numbers]) if isinstance(numbers, int) else numbers
    if len(numbers) and (numbers.min() < 0 or numbers.max() >= count):
        raise IndexError(f"row numbers must lie in [0, {count})")
    return numbers


def erase_text_rows(source: Path, rows: Iterable[int], target: Path,
                    spill_dir: Path | None = None) -> None:
    """Write the text dataset at ``source`` to ``target`` with the training ``rows``' texts
    emptied and their subjects cleared (row numbers, ids and labels stay: the evidence)."""
    erased = {int(row) for row in rows}
    with TextRows(source) as stored:
        spills = {split: TextSpill(spill_dir) for split in SPLITS}
        try:
            for split in SPLITS:
                for numbers, texts, _ in stored.iter_batches(split, batch_size=4096):
                    for row, text in zip(numbers.tolist(), texts, strict=True):
                        gone = split == "train" and row in erased
                        spills[split].add(b"" if gone else text.encode("utf-8"))
            subjects = None if stored.subjects_train is None else list(stored.subjects_train)
            if subjects is not None:
                for row in erased:
                    subjects[row] = None
            TextDataset(texts=spills, y_train=stored.y_train, y_test=stored.y_test,
                        ids_train=list(stored.ids_train), classes=stored.classes,
                        subjects_train=subjects, text_column=stored.text_column,
                        table=stored.table).save(target)
        finally:
            for spill in spills.values():
                spill.close()
