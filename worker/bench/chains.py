"""What a fallback chain publishes, replayed from a benchmark's per-seed gate verdicts.

Each trial (pair, scenario, seed) tries the chain's methods in turn, as a job does: every
candidate runs from the base model, the first the gate passes is published, and the time of
every candidate tried is paid. ``retrain`` (the reference) is exact, so the gate publishes it
whatever its figures. The published models are scored as the bench scores a method: SalUn's
Avg. Gap (the gap between means over seeds) against retrain's, per pair.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from worker.bench.scoring import gap_between_means

REFERENCE = "retrain"
SCENARIOS = ("random-10", "class")


@dataclass(frozen=True)
class ChainOutcome:
    """One chain on one pair and scenario, over the run's seeds."""

    pair: str
    scenario: str
    trials: int
    first_passed: int  # trials the chain's first method published
    approximate: int  # trials any method but retrain published
    seconds: float  # mean over trials of every tried candidate's seconds
    retrain_seconds: float
    gap_salun: float | None

    @property
    def speedup(self) -> float:
        return self.retrain_seconds / self.seconds if self.seconds > 0 else float("inf")


def merged(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs on the same pairs, seeds and originals as one: each pair's rows from every
    run, the first run's where two have the same row. A ``--tune`` run contributes its chosen
    setting under its method's name (its other settings are left out), so tune runs on the
    validation split replay as the methods they tuned."""
    pairs: dict[str, dict[str, Any]] = {}
    for document in documents:
        for pair in document.get("pairs") or [document]:
            name = pair.get("pair", pair.get("preset", ""))
            target = pairs.setdefault(name, {"pair": name, "rows": []})
            seen = {(row["label"], row["scenario"]) for row in target["rows"]}
            for row in _as_methods(document, pair["rows"]):
                if (row["label"], row["scenario"]) not in seen:
                    target["rows"].append(row)
    return {"pairs": list(pairs.values())}


def _as_methods(document: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tune = document.get("tune")
    if not tune:
        return rows
    chosen = tune["chosen"]["label"]
    return [row if row["label"] == REFERENCE else {**row, "label": tune["method"]}
            for row in rows if row["label"] in (REFERENCE, chosen)]


def replay(results: dict[str, Any], chain: list[str], scenario: str) -> list[ChainOutcome]:
    """``chain`` on every pair of a suite's ``results`` (or on a single pair's)."""
    pairs = results.get("pairs") or [results]
    return [_replay_pair(pair, chain, scenario) for pair in pairs]


def _replay_pair(pair: dict[str, Any], chain: list[str], scenario: str) -> ChainOutcome:
    rows = {row["label"]: row for row in pair["rows"] if row["scenario"] == scenario}
    missing = [name for name in (*chain, REFERENCE) if name not in rows]
    if missing:
        raise ValueError(f"{pair.get('pair', 'the run')}: no {scenario} rows for "
                         f"{', '.join(missing)}")
    published, seconds, first, approximate = [], [], 0, 0
    reference = rows[REFERENCE]["per_seed"]
    for index in range(len(reference)):
        spent = 0.0
        for position, name in enumerate(chain):
            trial = rows[name]["per_seed"][index]
            spent += trial["seconds"] or 0.0
            if name == REFERENCE or _passed(trial):
                published.append(trial)
                first += position == 0
                approximate += name != REFERENCE
                break  # a chain without retrain may publish nothing: the job fails
        seconds.append(spent)
    return ChainOutcome(
        pair=pair.get("pair", pair.get("preset", "")), scenario=scenario,
        trials=len(reference), first_passed=first, approximate=approximate,
        seconds=statistics.fmean(seconds),
        retrain_seconds=statistics.fmean(trial["seconds"] for trial in reference),
        gap_salun=gap_between_means(published, reference) if published else None)


@dataclass(frozen=True)
class ChainTotal:
    """One chain's outcomes on every pair of a run, summed (counts) or averaged over the
    pairs (seconds, speed-up, gap), as the bench averages a method's rows."""

    methods: list[str]
    first_passed: int
    approximate: int
    trials: int
    seconds: float
    retrain_seconds: float
    speedup: float
    gap_salun: float | None

    @property
    def label(self) -> str:
        return " → ".join(self.methods)


def over_pairs(chain: list[str], outcomes: list[ChainOutcome]) -> ChainTotal:
    gaps = [o.gap_salun for o in outcomes]
    return ChainTotal(
        methods=chain, first_passed=sum(o.first_passed for o in outcomes),
        approximate=sum(o.approximate for o in outcomes),
        trials=sum(o.trials for o in outcomes),
        seconds=statistics.fmean(o.seconds for o in outcomes),
        retrain_seconds=statistics.fmean(o.retrain_seconds for o in outcomes),
        speedup=statistics.fmean(o.speedup for o in outcomes),
        gap_salun=None if any(g is None for g in gaps) else statistics.fmean(gaps))


def _passed(trial: dict[str, Any]) -> bool:
    return not trial.get("error") and (trial.get("gate") or {}).get("verdict") == "passed"


def chains_markdown(results: dict[str, Any], chains: dict[str, list[list[str]]]) -> str:
    """A table per scenario: each chain's outcome per pair and on average over the pairs."""
    lines = ["# Default chains replayed on the benchmark's trials", "",
             "Each trial tries the chain's methods in turn from the base model, as a job "
             "does, until the acceptance gate passes one (retrain is exact); seconds: the "
             "mean per trial of every candidate tried; speed-up: retrain's mean seconds over "
             "the chain's, per pair, then averaged. Avg. Gap: SalUn's convention (between "
             "means over seeds) on the published models, against retrain.", ""]
    for scenario, scenario_chains in chains.items():
        if not scenario_chains:
            continue
        lines += [f"## `{scenario}`", "",
                  "| chain | pair | first method published | an approximation published "
                  "| seconds | speed-up | Avg. Gap (SalUn) |", "|---|---|---|---|---|---|---|"]
        for chain in scenario_chains:
            outcomes = replay(results, chain, scenario)
            label = " → ".join(chain)
            lines += [_row(label, outcome.pair, outcome) for outcome in outcomes]
            lines.append(_row(label, "**mean over pairs**", over_pairs(chain, outcomes)))
        lines.append("")
    return "\n".join(lines)


def _row(label: str, pair: str, outcome: ChainOutcome | ChainTotal) -> str:
    o = outcome
    shown_gap = "—" if o.gap_salun is None else f"{o.gap_salun:.2f}"
    return (f"| {label} | {pair} | {o.first_passed}/{o.trials} | {o.approximate}/{o.trials} "
            f"| {o.seconds:.2f} | {o.speedup:.1f}x | {shown_gap} |")
