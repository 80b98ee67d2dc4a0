"""Reading hostile archives safely: members are checked, then read into memory, never extracted.

Every check raises :class:`DatasetFormatError` naming the offending member, before that member
(or, for zip files, any member) is read.
"""

from __future__ import annotations

import gzip
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Below this many bytes a high compression ratio is harmless (e.g. a tar's zero padding).
RATIO_FLOOR_BYTES = 1 << 20
# What a tar stream may add to its members' declared sizes: a header and padding per member,
# plus the end-of-archive record.
TAR_OVERHEAD_PER_MEMBER = 1024
TAR_OVERHEAD_FIXED = 1 << 16

_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class DatasetFormatError(ValueError):
    """An upload that is not a dataset Lethe accepts; the message says what is wrong.

    A table's errors also carry the ``column`` (and the ``row``, 0 being the first data row)
    at fault, for the problem's extension members."""

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.column, self.row = column, row


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an upload may unpack to; the defaults match ``app.core.config``.

    ``max_bytes`` bounds the archive's total uncompressed content (a zip bomb),
    ``max_decoded_bytes`` the pixel arrays it decodes to (many ordinary images: pixels ×
    channels summed over all of them; a table's features as float32, or its texts' UTF-8
    bytes), ``max_image_pixels`` one image (an image bomb). The text bounds are what the
    database stores: an image's path is its sample id.
    """

    max_members: int = 200_000
    max_bytes: int = 4 << 30
    max_ratio: float = 200.0
    max_image_pixels: int = 4096 * 4096
    max_decoded_bytes: int = 2 << 30
    max_id_chars: int = 1024
    max_subject_chars: int = 200
    # Text and tabular uploads (CSV, JSON Lines, Parquet): rows in all, characters of one
    # text cell, bytes of one line of a CSV or JSON Lines file, distinct labels.
    max_rows: int = 1_000_000
    max_text_chars: int = 100_000
    max_row_bytes: int = 1 << 20
    max_classes: int = 10_000


@dataclass(frozen=True)
class Member:
    name: str  # normalised: "/"-separated, no "." or empty components
    data: bytes


WantedFn = Callable[[str], bool]


def check_text(what: str, value: str, max_chars: int) -> None:
    """Refuse text the database would refuse at the insert, after all the decoding: too long,
    holding NUL characters, or not encodable as UTF-8 (lone surrogates)."""
    shown = repr(value[:80]) + ("..." if len(value) > 80 else "")
    if len(value) > max_chars:
        raise DatasetFormatError(f"{what} {shown}: longer than {max_chars} characters")
    if "\x00" in value:
        raise DatasetFormatError(f"{what} {shown}: NUL characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetFormatError(f"{what} {shown}: not valid Unicode text") from None


def normalise_member_name(raw: str) -> str:
    """The member's path with ``.`` and empty components dropped; rejects escaping names."""
    if "\\" in raw:
        raise DatasetFormatError(f"member {raw!r}: backslashes are not allowed in paths")
    if _CONTROL_CHARS.search(raw):
        raise DatasetFormatError(f"member {raw!r}: control characters in path")
    if raw.startswith("/") or _DRIVE_LETTER.match(raw):
        raise DatasetFormatError(f"member {raw!r}: absolute paths are not allowed")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise DatasetFormatError(f"member {raw!r}: '..' components are not allowed")
    return "/".join(parts)


class _SizeBudget:
    """Counts members and their declared sizes against the limits, failing on the first excess."""

    def __init__(self, limits: ArchiveLimits, archive_size: int, *, compressed: bool):
        self.limits = limits
        self.archive_size = max(1, archive_size)
        self.compressed = compressed
        self.members = 0
        self.total = 0
        self.names: set[str] = set()

    def add(self, raw_name: str, name: str, size: int) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise DatasetFormatError(
                f"member {raw_name!r}: more than {self.limits.max_members} members")
        if name and name in self.names:
            raise DatasetFormatError(f"member {raw_name!r}: appears twice")
        check_text("member", name, self.limits.max_id_chars)
        self.names.add(name)
        self.total += size
        if self.total > self.limits.max_bytes:
            raise DatasetFormatError(f"member {raw_name!r}: archive content exceeds "
                                     f"{self.limits.max_bytes} bytes uncompressed")
        if self.compressed and self.total > max(RATIO_FLOOR_BYTES,
                                                self.limits.max_ratio * self.archive_size):
            raise DatasetFormatError(f"member {raw_name!r}: archive expands more than "
                                     f"{self.limits.max_ratio:g}x; refusing a possible zip bomb")


# --- zip -----------------------------------------------------------------------------------

def _zip_member_name(info: zipfile.ZipInfo) -> str:
    """The normalised name, after rejecting links, special files and encryption."""
    name = normalise_member_name(info.filename)
    mode = info.external_attr >> 16  # Unix st_mode, when the archiver recorded one
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise DatasetFormatError(f"member {info.filename!r}: symbolic links are not allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DatasetFormatError(f"member {info.filename!r}: not a regular file")
    if info.flag_bits & 0x1:
        raise DatasetFormatError(f"member {info.filename!r}: encrypted members are not supported")
    if not name and not info.is_dir():
        raise DatasetFormatError(f"member {info.filename!r}: empty file name")
    return name


def _check_zip_ratio(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    if info.file_size > max(RATIO_FLOOR_BYTES, limits.max_ratio * max(1, info.compress_size)):
        raise DatasetFormatError(f"member {info.filename!r}: expands more than "
                                 f"{limits.max_ratio:g}x; refusing a possible zip bomb")


def check_zip_listing(zf: zipfile.ZipFile, archive_size: int,
                      limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    """Validate the whole central directory up front; returns regular files by normalised name."""
    budget = _SizeBudget(limits, archive_size, compressed=True)
    files: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = _zip_member_name(info)
        budget.add(info.filename, name, info.file_size)
        _check_zip_ratio(info, limits)
        if not info.is_dir():
            files[name] = info
    return files


@contextmanager
def open_zip(path: Path):
    """A ZipFile whose format errors surface as DatasetFormatError."""
    try:
        with zipfile.ZipFile(path) as zf:
            yield zf
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            NotImplementedError) as exc:
        raise DatasetFormatError(f"not a readable zip archive: {exc}") from exc


def iter_zip_members(path: Path, limits: ArchiveLimits, wanted: WantedFn,
                     first: str | None = None) -> Iterator[Member]:
    """The regular files whose normalised name ``wanted`` accepts, checked before any is read;
    the member named ``first`` (a manifest, say) comes before the others."""
    with open_zip(path) as zf:
        files = check_zip_listing(zf, path.stat().st_size, limits)
        for name, info in sorted(files.items(), key=lambda item: item[0] != first):
            if wanted(name):
                # ZipExtFile stops at the declared size and verifies the CRC.
                yield Member(name, zf.read(info))


# --- tar -----------------------------------------------------------------------------------

class _BoundedReader:
    """A read-only stream that fails once more than ``limit`` bytes came through it.

    tarfile reads pax and GNU long-name headers into memory on its own; this bounds those too.
    """

    def __init__(self, inner, limit: int, what: str):
        self._inner, self._limit, self._what = inner, limit, what
        self._count = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit - self._count + 1
        data = self._inner.read(size)
        self._count += len(data)
        if self._count > self._limit:
            raise DatasetFormatError(f"{self._what} expands beyond {self._limit} bytes; "
                                     "refusing a possible decompression bomb")
        return data


def _tar_stream_limit(limits: ArchiveLimits, archive_size: int, *, gzipped: bool) -> int:
    limit = (limits.max_bytes + TAR_OVERHEAD_FIXED
             + TAR_OVERHEAD_PER_MEMBER * limits.max_members)
    if gzipped:
        limit = min(limit, max(RATIO_FLOOR_BYTES, int(limits.max_ratio * archive_size)))
    return limit


def _tar_member_name(info: tarfile.TarInfo) -> str:
    """The normalised name, after rejecting links, devices and other non-regular members."""
    name = normalise_member_name(info.name)
    if info.issym():
        raise DatasetFormatError(f"member {info.name!r}: symbolic links are not allowed")
    if info.islnk():
        raise DatasetFormatError(f"member {info.name!r}: hard links are not allowed")
    if info.ischr() or info.isblk() or info.isfifo():
        raise DatasetFormatError(f"member {info.name!r}: devices and FIFOs are not allowed")
    if info.issparse() or not (info.isreg() or info.isdir()):
        raise DatasetFormatError(f"member {info.name!r}: not a regular file")
    if not name and not info.isdir():
        raise DatasetFormatError(f"member {info.name!r}: empty file name")
    return name


def _walk_tar(tar: tarfile.TarFile, budget: _SizeBudget, wanted: WantedFn) -> Iterator[Member]:
    for info in tar:
        name = _tar_member_name(info)
        budget.add(info.name, name, info.size)
        if info.isreg() and wanted(name):
            handle = tar.extractfile(info)
            assert handle is not None  # regular members always have a file object
            yield Member(name, handle.read())
        tar.members.clear()  # stream mode needs no history; keeps memory flat


def iter_tar_members(path: Path, limits: ArchiveLimits, wanted: WantedFn, *,
                     gzipped: bool) -> Iterator[Member]:
    """Regular files, in archive order, read as one forward stream (fast for tar.gz)."""
    archive_size = path.stat().st_size
    budget = _SizeBudget(limits, archive_size, compressed=gzipped)
    limit = _tar_stream_limit(limits, archive_size, gzipped=gzipped)
    what = "tar.gz archive" if gzipped else "tar archive"
    try:
        with path.open("rb") as raw, (gzip.GzipFile(fileobj=raw) if gzipped else raw) as stream:
            bounded = _BoundedReader(stream, limit, what)
            with tarfile.open(fileobj=bounded, mode="r|") as tar:
                yield from _walk_tar(tar, budget, wanted)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"not a readable {what}: {exc}") from exc
