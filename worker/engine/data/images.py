"""Decoding image members to uint8 arrays that all share the first image's size and mode."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


def _decode(name: str, data: bytes, max_pixels: int,
            expected: ImageSpec | None) -> tuple[ImageSpec, np.ndarray]:
    """Checks the header (pixels, size, mode) before decoding any pixel data."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            if img.width * img.height > max_pixels:
                raise DatasetFormatError(f"member {name!r}: {img.width}x{img.height} exceeds "
                                         f"{max_pixels} pixels")
            found = ImageSpec(name, img.width, img.height, _target_mode(name, img.mode))
            if expected is not None and found.key != expected.key:
                raise DatasetFormatError(
                    f"member {name!r} is {found} but {expected.source!r} is {expected}; "
                    "all images must share one size and mode")
            array = np.asarray(img if img.mode == found.mode else img.convert(found.mode))
    except DatasetFormatError:
        raise
    except Image.DecompressionBombError as exc:
        raise DatasetFormatError(f"member {name!r}: image exceeds {max_pixels} pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"member {name!r}: not a readable image ({exc})") from exc
    return found, array.reshape(found.shape)


class ImageDecoder:
    """Decodes image members in the order added into one ``N×H×W×C`` uint8 array.

    The first image sets the size and mode every later one must have. Each header is checked
    (pixels, size, mode, and the decoded total against ``max_bytes``) before its pixel data is
    decoded, so an image bomb fails without being decoded.
    """

    def __init__(self, limits: ArchiveLimits):
        self.limits = limits
        self.spec: ImageSpec | None = None
        self.names: list[str] = []
        self._images: list[np.ndarray] = []
        self._max_images = 1  # until the first image tells how large each one is

    def add(self, name: str, data: bytes) -> None:
        # Every image has the first one's shape, so the total is known before decoding.
        if len(self.names) >= self._max_images:
            raise DatasetFormatError(f"member {name!r}: decoded images exceed "
                                     f"{self.limits.max_bytes} bytes")
        spec, image = _decode(name, data, self.limits.max_image_pixels, self.spec)
        if self.spec is None:
            self.spec, self._max_images = spec, self.limits.max_bytes // spec.nbytes
        self.names.append(name)
        self._images.append(image)

    def finish(self) -> tuple[list[str], np.ndarray]:
        """Names and their images, in the order added."""
        if not self._images:
            return [], np.empty((0, 0, 0, 0), dtype=np.uint8)
        return self.names, np.stack(self._images)
