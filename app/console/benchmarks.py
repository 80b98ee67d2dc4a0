"""The benchmark's committed results, for the console: its trade-off plot and, per scenario,
the approximate methods ranked as the README's recommendations rank them (the gate's pass rate
first, then the gap to retraining), and what this service's default chain for the scenario's
kind of request publishes, replayed on the run's per-seed gate verdicts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import app
from app.core.config import get_settings
from worker.bench.chains import ChainTotal, over_pairs, replay

PRESETS = ("zoo", "cpu")  # the first found is shown: zoo is the run the defaults are judged on
PLOT = "results-tradeoff.png"
SCENARIO_NAMES = {"random-10": "Scattered samples (10% at random)", "class": "A whole class"}
EXACT = "retrain"


@dataclass(frozen=True)
class MethodRow:
    label: str
    gap: float | None  # Avg. Gap (SalUn) to retraining, points
    speedup: float | None
    gate_passed: int
    gate_trials: int
    ua: float | None
    ra: float | None


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    rows: list[MethodRow]  # best first; retrain, the exact reference, excluded
    default_chain: ChainTotal | None = None

    @property
    def recommended(self) -> MethodRow | None:
        return self.rows[0] if self.rows else None


@dataclass(frozen=True)
class Results:
    preset: str
    description: str
    created: str | None
    plot: Path | None
    scenarios: list[Scenario]
    source: Path


def candidate_dirs() -> list[Path]:
    """Where results may be: the configured folder, else the checkout the package runs from
    (an installed wheel has none: the page then says how to point at them)."""
    configured = get_settings().benchmarks_dir
    if configured is not None:
        return [configured]
    return [Path(app.__file__).resolve().parent.parent / "benchmarks"]


def find_results() -> Results | None:
    for folder in candidate_dirs():
        for preset in PRESETS:
            path = folder / preset / "results.json"
            if path.is_file():
                return _load(path, path.stat().st_mtime_ns)
    return None


@lru_cache(maxsize=4)
def _load(path: Path, _mtime: int) -> Results | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    plot = path.parent / PLOT
    names = document.get("scenarios") or []
    if not names and isinstance(document.get("rows"), list):
        names = list(dict.fromkeys(r.get("scenario") for r in document["rows"]))
    return Results(preset=str(document.get("preset", path.parent.name)),
                   description=str(document.get("description", "")),
                   created=document.get("created"), plot=plot if plot.is_file() else None,
                   scenarios=[_scenario(document, name) for name in names if name],
                   source=path)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _scenario(document: dict, name: str) -> Scenario:
    rows = [MethodRow(label=str(r.get("label", r.get("method"))),
                      gap=_number(r.get("avg_gap_salun", r.get("avg_gap"))),
                      speedup=_number(r.get("speedup")),
                      gate_passed=int(r.get("gate_passed") or 0),
                      gate_trials=int(r.get("gate_trials") or 0),
                      ua=_number(r.get("ua")), ra=_number(r.get("ra")))
            for r in document.get("rows", [])
            if isinstance(r, dict) and r.get("scenario") == name and r.get("method") != EXACT]
    rows.sort(key=_rank)
    return Scenario(name, SCENARIO_NAMES.get(name, name), rows, _default_chain(document, name))


def _default_chain(document: dict, name: str) -> ChainTotal | None:
    """The default chain's replay, or None where the run lacks the per-seed rows it needs (a
    method of the chain not run, or results from before the gate)."""
    methods = get_settings().default_chain(classes=name == "class")
    try:
        outcomes = replay(document, methods, name)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return over_pairs(methods, outcomes) if outcomes else None


def _rank(row: MethodRow) -> tuple:
    share = row.gate_passed / row.gate_trials if row.gate_trials else 0.0
    return (-share, row.gap if row.gap is not None else float("inf"), row.label)
