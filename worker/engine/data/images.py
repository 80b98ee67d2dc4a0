"""Decoding image members to uint8 arrays that all share the first image's size and mode."""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from worker.engine.data.archive import ArchiveLimits, DatasetFormatError

# Formats PIL may try. A short list keeps plugins such as EPS (which runs Ghostscript) away
# from untrusted bytes, and makes format sniffing cheaper.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
_TO_GREY = {"L", "1", "LA", "La"}
_TO_RGB = {"RGB", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


@dataclass(frozen=True)
class ImageSpec:
    """The size and mode every image of an upload must share, set by its first image."""

    source: str  # the member that set it
    width: int
    height: int
    mode: str  # "L" or "RGB"

    @property
    def key(self) -> tuple[int, int, str]:
        return self.width, self.height, self.mode

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, 1 if self.mode == "L" else 3

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape)

    def __str__(self) -> str:
        return f"{self.width}x{self.height} {self.mode}"


@contextmanager
def pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's own decompression-bomb guard at our limit for the block (ours, checked first,
    gives the clearer message), then the process-wide value back."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _target_mode(name: str, mode: str) -> str:
    if mode in _TO_GREY:
        return "L"
    if mode in _TO_RGB:
        return "RGB"
    raise DatasetFormatError(f"member {name!r}: unsupported image mode {mode}; "
                             "use 8-bit grey or colour images")


@contextmanager
def _opened(name: str, data: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """The image with only its header read (``Image.open`` is lazy); decoding errors anywhere
    inside the block become a DatasetFormatError naming the member."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            yield img
    except DatasetFormatError:
        raise
    except Image.DecompressionBombError as exc:
        raise DatasetFormatError(f"member {name!r}: image exceeds {max_pixels} pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"member {name!r}: not a readable image ({exc})") from exc


def _header_spec(name: str, img: Image.Image, max_pixels: int) -> ImageSpec:
    if img.width * img.height > max_pixels:
        raise DatasetFormatError(f"member {name!r}: {img.width}x{img.height} exceeds "
                                 f"{max_pixels} pixels")
    return ImageSpec(name, img.width, img.height, _target_mode(name, img.mode))


def _pixels(name: str, img: Image.Image, spec: ImageSpec) -> bytes:
    """The decoded rows, ``H×W×C`` uint8 in C order (what ``np.asarray`` would hold)."""
    data = (img if img.mode == spec.mode else img.convert(spec.mode)).tobytes()
    if len(data) != spec.nbytes:
        raise DatasetFormatError(f"member {name!r}: decoded to {len(data)} bytes, not "
                                 f"{spec.nbytes}")
    return data


class ImageDecoder:
    """Decodes image members, in the order added, as the rows of one ``N×H×W×C`` uint8 array.

    The first image sets the size and mode every later one must have. Each header is read
    before any pixel: its pixel count, size and mode, and the decoded total it would bring,
    are checked first, so nothing past ``max_decoded_bytes`` is ever decoded (with
    ``expected_images``, e.g. a zip's listing, the whole total is known at the first header).
    Decoded images go straight to an unnamed spill file, one at a time, so memory never holds
    a list of them; :meth:`read` takes rows back out, in any order.
    """

    def __init__(self, limits: ArchiveLimits, *, expected_images: int | None = None,
                 spill_dir: Path | None = None):
        self.limits = limits
        self.expected_images = expected_images
        self.spec: ImageSpec | None = None
        self.names: list[str] = []
        self._spill = tempfile.TemporaryFile(dir=spill_dir)  # noqa: SIM115 - see __exit__

    def __enter__(self) -> ImageDecoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self._spill.close()  # unnamed: nothing is left on disk, even after a kill

    def add(self, name: str, data: bytes) -> None:
        with _opened(name, data, self.limits.max_image_pixels) as img:
            self._check(name, _header_spec(name, img, self.limits.max_image_pixels))
            pixels = _pixels(name, img, self.spec)
        self._spill.write(pixels)  # outside: a full disk is not an unreadable image
        self.names.append(name)

    def _check(self, name: str, found: ImageSpec) -> None:
        if self.spec is None:
            self.spec = found
        elif found.key != self.spec.key:
            raise DatasetFormatError(
                f"member {name!r} is {found} but {self.spec.source!r} is {self.spec}; "
                "all images must share one size and mode")
        images = max(len(self.names) + 1, self.expected_images or 0)
        if images * self.spec.nbytes > self.limits.max_decoded_bytes:
            raise DatasetFormatError(
                f"member {name!r}: decoded images exceed {self.limits.max_decoded_bytes} "
                f"bytes ({images} images of {self.spec} would take {images * self.spec.nbytes})")

    def read(self, rows: list[int]) -> np.ndarray:
        """The images added as numbers ``rows`` (0 is the first), as one ``len(rows)×H×W×C``
        array, read back from the spill file (never mapped, so it never counts as memory)."""
        self._spill.flush()
        shape = self.spec.shape if self.spec else (0, 0, 0)
        out = np.empty((len(rows), *shape), dtype=np.uint8)
        for index, row in enumerate(rows):
            size = out[index].nbytes
            if os.preadv(self._spill.fileno(), [out[index]], row * size) != size:
                raise OSError(f"image {row} is missing from the spill file")
        return out
