"""From one run's scores per seed to the table's rows: percent scores, gaps, means over seeds,
the acceptance gate's pass rates, and means over (dataset, architecture) pairs.

Two Avg. Gap conventions, both kept because they answer different questions:

- ``avg_gap`` (Lethe's): per seed, the mean over UA, RA, TA and MIA (Lethe's logistic-regression
  attack) of |method − that seed's retrain|, then averaged over seeds. It is what a single
  request costs, and it never lets one seed's overshoot cancel another's undershoot.
- ``avg_gap_salun`` (SalUn's, Fan et al., ICLR 2024): the mean over UA, RA, TA and MIA
  (SalUn's SVC attack) of |mean over seeds of the method − mean over seeds of retrain|. It is
  the figure SalUn's tables report and is never larger than the per-seed one on the same MIA;
  use it wherever a figure stands beside a published one.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SCORES = ("ua", "ra", "ta", "mia")  # Lethe's per-seed Avg. Gap averages over these
SALUN_SCORES = ("ua", "ra", "ta", "mia_salun")  # SalUn's Avg. Gap, between means over seeds
AVERAGED = ("ua", "ra", "ta", "mia", "mia_salun", "avg_gap", "js", "seconds", "speedup")
# Averaged over pairs in a suite's overall table (each pair's figure first over its seeds).
PAIR_AVERAGED = (*AVERAGED, "avg_gap_salun", "gate_pass_rate")
# What a method reports of its own that the table surfaces (ssd: how many weights it dampened).
SURFACED_METRICS = ("weights_dampened", "weights_total")


@dataclass
class Trial:
    """One contender on one seed and scenario. ``scores`` in percent; None when it failed."""

    seed: int
    scenario: str
    label: str
    method: str
    params: dict[str, Any]
    seconds: float | None = None
    scores: dict[str, float] | None = None
    js: float | None = None  # to the retrained model on D_f, in nats
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # what the method reported
    gate: dict[str, Any] | None = None  # the acceptance gate's verdict (GateVerdict.as_dict())

    @property
    def gate_passed(self) -> bool:
        return self.gate is not None and self.gate.get("verdict") == "passed"


def percent_scores(evaluation: dict[str, float | None]) -> dict[str, float]:
    """UA, RA, TA, MIA (and SalUn's MIA when measured) in percent from the fractions of
    ``metrics.evaluate`` (plus ``salun_mia_efficacy``)."""
    scores = {"ua": 100.0 * (1.0 - evaluation["forget_accuracy"]),
              "ra": 100.0 * evaluation["retain_accuracy"],
              "ta": 100.0 * evaluation["test_accuracy"],
              "mia": 100.0 * evaluation["mia_efficacy"]}
    if evaluation.get("salun_mia_efficacy") is not None:
        scores["mia_salun"] = 100.0 * evaluation["salun_mia_efficacy"]
    return scores


def avg_gap(scores: dict[str, float], reference: dict[str, float],
            keys: tuple[str, ...] = SCORES) -> float:
    return statistics.fmean(abs(scores[key] - reference[key]) for key in keys)


def gap_between_means(method_scores: list[dict[str, float]],
                      reference_scores: list[dict[str, float]],
                      keys: tuple[str, ...] = SALUN_SCORES) -> float | None:
    """SalUn's Avg. Gap: the mean over ``keys`` of |mean over trials of the method − mean over
    trials of the reference|; None when a score is missing or there are no trials."""
    if not method_scores or not reference_scores:
        return None
    if any(key not in scores for scores in (*method_scores, *reference_scores) for key in keys):
        return None

    def mean(trials: list[dict[str, float]], key: str) -> float:
        return statistics.fmean(scores[key] for scores in trials)

    return statistics.fmean(abs(mean(method_scores, key) - mean(reference_scores, key))
                            for key in keys)


def summarise(trials: list[Trial], reference_label: str) -> list[dict[str, Any]]:
    """One row per scenario and contender, in the order the trials ran: each seed's scores
    against that seed's reference, then mean and standard deviation over seeds."""
    references = {(t.scenario, t.seed): t for t in trials if t.label == reference_label}
    groups: dict[tuple[str, str], list[Trial]] = {}
    for trial in trials:
        groups.setdefault((trial.scenario, trial.label), []).append(trial)
    return [_row(group, references) for group in groups.values()]


def _row(group: list[Trial], references: dict[tuple[str, int], Trial]) -> dict[str, Any]:
    first = group[0]
    paired = [(t, references[(t.scenario, t.seed)]) for t in group]
    per_seed = [_seed_values(t, reference) for t, reference in paired]
    done = [values for values in per_seed if values is not None]
    row: dict[str, Any] = {"scenario": first.scenario, "method": first.method,
                           "label": first.label, "seeds": [t.seed for t in group],
                           "seeds_ok": len(done)}
    for key in AVERAGED:
        row[key], row[f"{key}_std"] = _mean_and_spread(
            [values[key] for values in done if values.get(key) is not None])
    # Between means over the seeds where both the method and the reference finished.
    finished = [(t, reference) for t, reference in paired
                if t.scores is not None and reference.scores is not None]
    gap = gap_between_means([t.scores for t, _ in finished], [r.scores for _, r in finished])
    row["avg_gap_salun"] = None if gap is None else _rounded(gap)
    row |= _gate_summary(group)
    row |= _surfaced_metrics(group)
    row["params"] = first.params
    row["per_seed"] = [_seed_record(t, values) for t, values in zip(group, per_seed, strict=True)]
    row["errors"] = [f"seed {t.seed}: {t.error}" for t in group if t.error]
    return row


def _gate_summary(group: list[Trial]) -> dict[str, Any]:
    """How many of the row's trials the acceptance gate would publish. A trial whose method
    raised has no model to judge and counts as not passed."""
    passed = sum(t.gate_passed for t in group)
    return {"gate_passed": passed, "gate_trials": len(group),
            "gate_pass_rate": _rounded(passed / len(group)) if group else None}


def _surfaced_metrics(group: list[Trial]) -> dict[str, Any]:
    """Per seed, the method's own figures the report shows (None where it did not report)."""
    return {name: [t.metrics.get(name) for t in group] for name in SURFACED_METRICS
            if any(name in t.metrics for t in group)}


def _seed_values(trial: Trial, reference: Trial) -> dict[str, float] | None:
    if trial.scores is None or reference.scores is None:
        return None
    return {**trial.scores, "avg_gap": avg_gap(trial.scores, reference.scores),
            "js": trial.js, "seconds": trial.seconds,
            "speedup": reference.seconds / max(trial.seconds, 1e-9)}


def _seed_record(trial: Trial, values: dict[str, float] | None) -> dict[str, Any]:
    record = {"seed": trial.seed, "error": trial.error, "metrics": trial.metrics,
              "gate": trial.gate}
    return record | {key: _rounded(value) for key, value in (values or {}).items()
                     if value is not None}


def gate_pass_rates(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label: the gate's pass rate over all its trials and per scenario."""
    rates: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = rates.setdefault(row["label"], {"method": row["method"], "passed": 0,
                                                "trials": 0, "per_scenario": {}})
        entry["passed"] += row["gate_passed"]
        entry["trials"] += row["gate_trials"]
        entry["per_scenario"][row["scenario"]] = row["gate_pass_rate"]
    for entry in rates.values():
        entry["pass_rate"] = _rounded(entry["passed"] / entry["trials"]) if entry["trials"] \
            else None
    return rates


def average_over_pairs(pair_rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per scenario and label over a suite's pairs: each figure's mean over the pairs
    where the row has one (each pair's own figure a mean over its seeds), ± the standard
    deviation over those pairs. Gate counts are summed."""
    grouped: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for pair, rows in pair_rows.items():
        for row in rows:
            grouped.setdefault((row["scenario"], row["label"]), []).append((pair, row))
    return [_pair_mean_row(members) for members in grouped.values()]


def _pair_mean_row(members: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    first = members[0][1]
    row: dict[str, Any] = {"scenario": first["scenario"], "method": first["method"],
                           "label": first["label"], "pairs": [pair for pair, _ in members],
                           "seeds": sorted({seed for _, r in members for seed in r["seeds"]})}
    for key in PAIR_AVERAGED:
        values = [r[key] for _, r in members if r.get(key) is not None]
        row[key], row[f"{key}_std"] = _mean_and_spread(values)
        row[f"{key}_pairs"] = len(values)
    row["pairs_ok"] = row["avg_gap_pairs"]
    row["gate_passed"] = sum(r["gate_passed"] for _, r in members)
    row["gate_trials"] = sum(r["gate_trials"] for _, r in members)
    row["errors"] = [f"{pair}: {error}" for pair, r in members for error in r["errors"]]
    return row


def _mean_and_spread(samples: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one sample); None for none."""
    samples = list(samples)
    if not samples:
        return None, None
    spread = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return _rounded(statistics.fmean(samples)), _rounded(spread)


def _rounded(value: float) -> float:
    return round(float(value), 4)
