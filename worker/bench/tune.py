"""``lethe bench --tune METHOD --grid JSON``: sweep a method's parameters on a validation split
taken from the training data (the test split is never looked at) and pick the setting with
the lowest Avg. Gap among those fast enough. On a suite of pairs (``--preset zoo``), each pair
is also judged by the setting the other pairs alone would have chosen."""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

from worker.bench import BenchConfigError
from worker.bench.cache import ModelCache
from worker.bench.data import load_validation_arrays, to_bench_data
from worker.bench.presets import Preset, default_cache_dir
from worker.bench.report import GOAL_SPEEDUP, write_report
from worker.bench.runner import (
    REFERENCE,
    BenchOutput,
    BenchRunner,
    Contender,
    PairPlan,
    contender,
    plan_scenarios,
    plan_seeds,
    resolve_suite,
    run_pairs,
    suite_results,
)
from worker.engine.methods import METHODS


def run_tune(preset: str, method: str, grid: dict[str, list[Any]], out: Path, *,
             scenarios: list[str] | None = None, seeds: list[int] | None = None,
             dataset: Path | None = None, cache_dir: Path | None = None,
             validation: str = "carve", min_speedup: float = GOAL_SPEEDUP,
             show_progress: bool = True, originals: Path | None = None,
             workers: int = 1) -> BenchOutput:
    """Run every grid point of ``method`` against retraining and write tune.json/.md/.png.
    ``validation`` says where the validation split comes from (see load_validation_arrays).
    On a suite of several pairs, each pair is swept, and each setting is also judged on every
    pair by the choice made on the other pairs alone (leave one pair out). ``originals`` (a
    pinned set of original models) and ``workers`` (pairs swept at once, each in its own
    process) as for run_bench."""
    suite = resolve_suite(preset, dataset)
    if method == REFERENCE:
        raise BenchConfigError("retrain is the reference every setting is measured against; "
                               "tune another method")
    points = grid_points(grid)
    labelled = {point_label(point): point for point in points}
    # Every pair's plan first: a bad option fails before the first pair's hours of training.
    plans = [PairPlan(pair, sweep_contenders(pair, method, labelled),
                      plan_scenarios(pair, scenarios), plan_seeds(pair, seeds), originals)
             for pair in suite.pairs]
    cache_dir = Path(cache_dir or default_cache_dir())
    started = time.perf_counter()
    job = functools.partial(tune_pair, method=method, grid=grid, labelled=labelled,
                            validation=validation, min_speedup=min_speedup)
    pair_results = run_pairs(plans, cache_dir, show_progress, workers, job)
    if len(pair_results) == 1:
        results = pair_results[0]
    else:
        results = suite_results(suite, pair_results)
        results["tune"] = {**_tune_record(method, grid, validation, min_speedup),
                           "chosen": choose(_all_rows(pair_results), labelled, min_speedup),
                           "leave_one_pair_out": leave_one_pair_out(
                               pair_results, labelled, min_speedup,
                               _defaults(method, suite.pairs[0]))}
    results["seconds"] = round(time.perf_counter() - started, 1)
    return BenchOutput(results, write_report(results, Path(out), stem="tune"))


def sweep_contenders(preset: Preset, method: str,
                     labelled: dict[str, dict[str, Any]]) -> list[Contender]:
    """Retrain, then the method at every grid point over the preset's overrides."""
    return [contender(REFERENCE, preset.params_for(REFERENCE)),
            *(contender(method, {**preset.params_for(method), **point}, label)
              for label, point in labelled.items())]


def tune_pair(plan: PairPlan, cache_dir: Path, show_progress: bool, *, method: str,
              grid: dict[str, list[Any]], labelled: dict[str, dict[str, Any]], validation: str,
              min_speedup: float) -> dict[str, Any]:
    """One pair's sweep on its validation split, with the setting its own rows choose."""
    preset = plan.preset
    started = time.perf_counter()
    arrays, name = load_validation_arrays(preset.dataset, cache_dir, validation)
    data = to_bench_data(arrays, name, test_split="validation")
    runner = BenchRunner(preset, data, ModelCache(cache_dir, plan.originals))
    trials = runner.run(plan.contenders, plan.scenarios, plan.seeds, show_progress)
    results = runner.results(trials, plan.scenarios, plan.seeds)
    results["tune"] = {**_tune_record(method, grid, validation, min_speedup),
                       "chosen": choose(results["rows"], labelled, min_speedup),
                       "versus_defaults": versus_defaults(results["rows"], labelled,
                                                          _defaults(method, preset))}
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def _tune_record(method: str, grid: dict[str, list[Any]], validation: str,
                 min_speedup: float) -> dict[str, Any]:
    return {"method": method, "grid": grid, "validation": validation,
            "min_speedup": min_speedup, "criterion": CRITERION.format(min_speedup=min_speedup)}


def _defaults(method: str, preset: Preset) -> dict[str, Any]:
    return METHODS.get(method).Params().model_dump(mode="json") | preset.params_for(method)


def _all_rows(pair_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for results in pair_results for row in results["rows"]]


def leave_one_pair_out(pair_results: list[dict[str, Any]], labelled: dict[str, dict[str, Any]],
                       min_speedup: float, defaults: dict[str, Any]) -> dict[str, Any]:
    """For each pair: the setting the criterion picks from the other pairs' rows, and how it
    scores on this pair (its Avg. Gap, mean over scenarios), beside this pair's own best and,
    when the grid holds them, the current defaults. A setting that only wins where it was
    tuned shows here as a held-out gap well above the pair's own best."""
    default_label = next((label for label, point in labelled.items()
                          if all(defaults.get(name) == value for name, value in point.items())),
                         None)
    held_out = {}
    for index, results in enumerate(pair_results):
        others = _all_rows(pair_results[:index] + pair_results[index + 1:])
        picked = choose(others, labelled, min_speedup)
        own = {label: _candidate(label, point, [row for row in results["rows"]
                                                if row["label"] == label])
               for label, point in labelled.items()}
        best = choose(results["rows"], labelled, min_speedup)
        held_out[results["pair"]] = {
            "chosen_elsewhere": None if picked is None else picked["label"],
            "gap_here": _gap(own, None if picked is None else picked["label"]),
            "best_here": None if best is None else best["label"],
            "best_gap_here": None if best is None else best["avg_gap"],
            "defaults_gap_here": _gap(own, default_label)}
    gaps = [entry["gap_here"] for entry in held_out.values() if entry["gap_here"] is not None]
    default_gaps = [entry["defaults_gap_here"] for entry in held_out.values()
                    if entry["defaults_gap_here"] is not None]
    return {"defaults": default_label, "pairs": held_out,
            "mean_held_out_gap": round(statistics.fmean(gaps), 4) if gaps else None,
            "mean_defaults_gap": round(statistics.fmean(default_gaps), 4)
            if default_gaps else None}


def _gap(candidates: dict[str, dict[str, Any] | None], label: str | None) -> float | None:
    candidate = candidates.get(label) if label is not None else None
    return None if candidate is None else candidate["avg_gap"]


CRITERION = ("lowest Avg. Gap averaged over the scenarios, among the settings at least "
             "{min_speedup:g}x faster than retrain in every scenario (among all settings when "
             "none is)")


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, as parameter overrides."""
    if not isinstance(grid, dict) or not grid or not all(
            isinstance(values, list) and values for values in grid.values()):
        raise BenchConfigError('--grid must be a JSON object of non-empty lists, e.g. '
                               '{"lr": [0.001, 0.01], "epochs": [2, 5]}')
    names = list(grid)
    return [dict(zip(names, values, strict=True))
            for values in itertools.product(*(grid[name] for name in names))]


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in point.items())


def choose(rows: list[dict[str, Any]], labelled: dict[str, dict[str, Any]],
           min_speedup: float) -> dict[str, Any] | None:
    """The setting the criterion picks, with its figures; None when every setting failed."""
    candidates = [_candidate(label, point, [row for row in rows if row["label"] == label])
                  for label, point in labelled.items()]
    finished = [candidate for candidate in candidates if candidate is not None]
    fast = [candidate for candidate in finished if candidate["speedup"] >= min_speedup]
    pool = fast or finished
    if not pool:
        return None
    best = min(pool, key=lambda candidate: candidate["avg_gap"])
    return best | {"met_min_speedup": bool(fast)}


def versus_defaults(rows: list[dict[str, Any]], labelled: dict[str, dict[str, Any]],
                    defaults: dict[str, Any]) -> dict[str, Any] | None:
    """Each setting against the grid's point that equals the current defaults, paired by seed:
    the mean change of the Avg. Gap (averaged over scenarios), its standard error, and on how
    many seeds the setting was better. Seeds share a forget set and a retrained reference, so
    pairing removes most of the spread between them. None when no point is the defaults."""
    label = next((label for label, point in labelled.items()
                  if all(defaults.get(name) == value for name, value in point.items())), None)
    if label is None:
        return None
    baseline = _gap_per_seed(rows, label)
    points = {}
    for other in (other for other in labelled if other != label):
        gaps = _gap_per_seed(rows, other)
        changes = [gaps[seed] - baseline[seed] for seed in baseline if seed in gaps]
        if not changes:
            continue
        error = statistics.stdev(changes) / len(changes) ** 0.5 if len(changes) > 1 else None
        points[other] = {"gap_change": round(statistics.fmean(changes), 4),
                         "standard_error": None if error is None else round(error, 4),
                         "better_on": sum(change < 0 for change in changes),
                         "seeds": len(changes)}
    return {"defaults": label, "points": points}


def _gap_per_seed(rows: list[dict[str, Any]], label: str) -> dict[int, float]:
    """Seed → Avg. Gap averaged over the scenarios, for seeds where every scenario finished."""
    by_seed: dict[int, list[float | None]] = {}
    for row in rows:
        if row["label"] == label:
            for record in row["per_seed"]:
                by_seed.setdefault(record["seed"], []).append(record.get("avg_gap"))
    return {seed: statistics.fmean(gaps) for seed, gaps in by_seed.items()
            if None not in gaps}


def _candidate(label: str, point: dict[str, Any],
               rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows or any(row["avg_gap"] is None for row in rows):
        return None
    return {"label": label, "params": point,
            "avg_gap": round(statistics.fmean(row["avg_gap"] for row in rows), 4),
            "speedup": min(row["speedup"] for row in rows),  # the slowest scenario decides
            "per_scenario": {row["scenario"]: {"avg_gap": row["avg_gap"],
                                               "speedup": row["speedup"]} for row in rows}}
