"""``lethe bench``: measure unlearning methods against retraining, and tune their defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class BenchConfigError(ValueError):
    """An option names something that does not exist, or does not parse."""


def parse_csv(text: str | None, cast: Callable[[str], Any] = str) -> list | None:
    """``"a, b"`` -> ``["a", "b"]`` (each through ``cast``); None for no option."""
    if text is None:
        return None
    try:
        return [cast(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise BenchConfigError(f"{text!r}: {exc}") from None
