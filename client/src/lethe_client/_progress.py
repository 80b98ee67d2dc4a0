"""A progress bar small enough to need no library: one redrawn line on a terminal, a line per
change of phase (and per tenth done) elsewhere, so logs stay short."""

from __future__ import annotations

import sys
from typing import TextIO

WIDTH = 28


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Bar:
    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool = True):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last: tuple[int, str] | None = None
        self._width = 0

    def update(self, fraction: float, text: str = "") -> None:
        if not self.enabled:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            filled = round(fraction * WIDTH)
            line = (f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
                    f"{fraction:4.0%} {text}").rstrip()
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
            return
        tenth = int(fraction * 10)
        phase = text.split(":")[0]
        if self._last != (tenth, phase):
            self._last = (tenth, phase)
            self.stream.write(f"{self.label} {fraction:4.0%} {text}".rstrip() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
