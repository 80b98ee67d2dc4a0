"""Two progress bars: the whole run (what is left) and the step running now (how far it is)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from worker.engine.methods import ProgressFn


class BenchProgress:
    def __init__(self, total_steps: int, enabled: bool = True):
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                              TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)
        self._total = total_steps
        self._done = 0
        self._overall = self._bars.add_task("bench", total=total_steps)
        self._current = self._bars.add_task("", total=1.0)

    def __enter__(self) -> BenchProgress:
        self._bars.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._bars.stop()

    @contextmanager
    def step(self, description: str) -> Iterator[ProgressFn]:
        """Show ``description`` as running; yields the callback for its fraction done."""
        self._bars.update(self._overall,
                          description=f"bench: step {self._done + 1} of {self._total}")
        self._bars.reset(self._current, total=1.0, description=f"  {description}")
        yield lambda fraction: self._bars.update(self._current, completed=fraction)
        self._done += 1
        self._bars.update(self._current, completed=1.0)
        self._bars.advance(self._overall)
