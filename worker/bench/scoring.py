"""From one run's scores per seed to the table's rows: percent scores, gaps, means over seeds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

SCORES = ("ua", "ra", "ta", "mia")  # the four Avg. Gap averages over
AVERAGED = (*SCORES, "avg_gap", "js", "seconds", "speedup")


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


def percent_scores(evaluation: dict[str, float | None]) -> dict[str, float]:
    """UA, RA, TA, MIA in percent from ``metrics.evaluate``'s fractions."""
    return {"ua": 100.0 * (1.0 - evaluation["forget_accuracy"]),
            "ra": 100.0 * evaluation["retain_accuracy"],
            "ta": 100.0 * evaluation["test_accuracy"],
            "mia": 100.0 * evaluation["mia_efficacy"]}


def avg_gap(scores: dict[str, float], reference: dict[str, float]) -> float:
    return statistics.fmean(abs(scores[key] - reference[key]) for key in SCORES)


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
    per_seed = [_seed_values(t, references[(t.scenario, t.seed)]) for t in group]
    done = [values for values in per_seed if values is not None]
    row: dict[str, Any] = {"scenario": first.scenario, "method": first.method,
                           "label": first.label, "seeds": [t.seed for t in group],
                           "seeds_ok": len(done)}
    for key in AVERAGED:
        row[key], row[f"{key}_std"] = _mean_and_spread([values[key] for values in done])
    row["params"] = first.params
    row["per_seed"] = [_seed_record(t, values) for t, values in zip(group, per_seed, strict=True)]
    row["errors"] = [f"seed {t.seed}: {t.error}" for t in group if t.error]
    return row


def _seed_values(trial: Trial, reference: Trial) -> dict[str, float] | None:
    if trial.scores is None or reference.scores is None:
        return None
    return {**trial.scores, "avg_gap": avg_gap(trial.scores, reference.scores),
            "js": trial.js, "seconds": trial.seconds,
            "speedup": reference.seconds / max(trial.seconds, 1e-9)}


def _seed_record(trial: Trial, values: dict[str, float] | None) -> dict[str, Any]:
    record = {"seed": trial.seed, "error": trial.error, "metrics": trial.metrics}
    return record | {key: _rounded(value) for key, value in (values or {}).items()}


def _mean_and_spread(samples: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one sample); None for none."""
    if not samples:
        return None, None
    spread = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return _rounded(statistics.fmean(samples)), _rounded(spread)


def _rounded(value: float) -> float:
    return round(float(value), 4)
