"""A tiny name -> entry registry, filled by decorators in one module per entry (timm style),
and by installed plugins: the modules an entry-point group names register the same way."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class UnknownEntryError(KeyError):
    def __init__(self, kind: str, name: str, known: list[str]):
        super().__init__(name)
        self.kind, self.name, self.known = kind, name, known

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.name!r}; known: {', '.join(self.known)}"


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, entry_point_group: str | None = None):
        self.kind = kind
        self._package = package
        self._group = entry_point_group
        self._entries: dict[str, T] = {}
        self._loaded = False
        # Plugins that failed to load: entry point name -> the error, logged and skipped.
        self.failed_plugins: dict[str, str] = {}
        # Entry name -> the distribution of the plugin that registered it.
        self.plugin_of: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return decorate

    def _load(self) -> None:
        # Importing every module of the package runs its @register decorators, so adding an
        # entry is adding one file.
        if self._loaded:
            return
        package = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self._package}.{info.name}")
        self._loaded = True
        if self._group:
            self._load_plugins(self._group)

    def _load_plugins(self, group: str) -> None:
        """Import every module the installed entry points of ``group`` name: each registers
        its entries with the same decorator as a built-in. A plugin that raises (an import
        error, a name registered twice) is logged and skipped, with anything it registered
        before failing taken back: one broken package never takes the registry down."""
        for point in importlib.metadata.entry_points(group=group):
            before = set(self._entries)
            try:
                point.load()
            except Exception as exc:  # noqa: BLE001 - any failure of foreign code is skipped
                for name in set(self._entries) - before:
                    del self._entries[name]
                self.failed_plugins[point.name] = f"{type(exc).__name__}: {exc}"
                log.warning("%s plugin %r (%s) failed to load and is skipped: %s", self.kind,
                            point.name, point.value, self.failed_plugins[point.name])
                continue
            distribution = getattr(point.dist, "name", None) or point.value
            for name in set(self._entries) - before:
                self.plugin_of[name] = distribution

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownEntryError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries
