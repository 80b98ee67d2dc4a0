"""The acceptance gate: a candidate version is published only if it kept the base version's
utility and forgot what it was asked to, as a model that never saw the forget set would.

Every criterion compares two measured figures and allows for their sampling error, so a
model retrained from scratch passes, while one that lost accuracy, still knows its forget set,
or over-forgot it (forget accuracy or membership far below the held-out level: the forget set
now stands out as much as it did before, in the other direction) fails. Figures are percent.

- utility: test accuracy (on the retained classes' rows after class forgetting) and retain
  accuracy may not fall more than ``max_utility_drop`` points below the base version's;
- class forgetting: a forgotten class's accuracy is at most ``class_forget_max``;
- random forgetting: forget accuracy sits within ``forget_margin_above`` points above and
  ``forget_margin_below`` points below the candidate's own held-out (test) accuracy, and the
  share of D_f a membership attack calls non-member within ``mia_margin`` of the share of
  held-out rows it calls so;
- always: finite outputs, and at least one weight changed.

Sampling error is allowed for on both sides, so retraining itself is not refused for the luck
of a draw: a reference measured on few rows widens its margins to ``z`` standard errors, and a
forget-set share fails only when an exact binomial test (one-sided, at the level of ``z``)
says it lies beyond its bound (20 forgotten rows cannot show a 3-point difference).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest, norm
from torch import nn

from worker.engine.gate_thresholds import GateThresholds
from worker.engine.methods._base import UnlearningData
from worker.engine.metrics import mia_features, predict_logits

MEMBER, NON_MEMBER = 1, 0

__all__ = ["Criterion", "Gate", "GateThresholds", "GateVerdict", "allowed_drop", "judge",
           "paired_se", "percent", "proportion_se", "significantly_beyond", "weights_changed"]


@dataclass
class Criterion:
    name: str
    value: float  # the measured figure
    bound: float  # the limit it was held to
    kind: str  # "min" (value must be >= bound) or "max" (value must be <= bound)
    passed: bool
    detail: str

    @property
    def shortfall(self) -> float:
        """Points by which the criterion failed (0 when it passed)."""
        return 0.0 if self.passed else round(abs(self.value - self.bound), 2)


@dataclass
class GateVerdict:
    passed: bool
    criteria: list[Criterion]
    figures: dict[str, float | None]
    exact: bool = False  # retraining: published whatever its noise-level figures say
    thresholds: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]

    def describe_failures(self) -> str:
        return "; ".join(c.detail for c in self.failed) or "every criterion passed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": "passed" if self.passed else "failed",
            "exact": self.exact,
            "figures": self.figures,
            "criteria": [asdict(c) | {"shortfall": c.shortfall} for c in self.criteria],
            "thresholds": self.thresholds,
        }


def _minimum(name: str, value: float, bound: float, what: str) -> Criterion:
    passed = value >= bound
    relation = ">=" if passed else "<"
    return Criterion(name, round(value, 2), round(bound, 2), "min", passed,
                     f"{what} {value:.2f} {relation} {bound:.2f}")


def proportion_se(p: float, n: int) -> float:
    """Standard error (points) of an accuracy ``p`` (percent) measured on ``n`` rows."""
    if n == 0:
        return 0.0
    share = min(max(p / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(share * (1.0 - share) / n)


def paired_se(base_correct: torch.Tensor, cand_correct: torch.Tensor) -> float:
    """Standard error (points) of the accuracy difference of two models on the same rows."""
    if len(base_correct) < 2:
        return 0.0
    diff = cand_correct.double() - base_correct.double()
    return 100.0 * float(diff.std()) / math.sqrt(len(diff))


@dataclass
class _Rows:
    test_x: torch.Tensor
    test_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    forget_x: torch.Tensor
    forget_y: torch.Tensor


def _sample(count: int, take: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(count, generator=generator)[: min(take, count)].sort().values


def gate_rows(data: UnlearningData, sample_rows: int, seed: int) -> _Rows:
    """Seeded samples of the retained classes' test rows, D_r and D_f."""
    generator = torch.Generator().manual_seed(seed)
    test_x, test_y = data.x_test, data.y_test
    if data.forget_classes:
        keep = ~torch.isin(test_y, torch.tensor(data.forget_classes, dtype=test_y.dtype))
        test_x, test_y = test_x[keep], test_y[keep]
    test = _sample(len(test_y), sample_rows, generator)
    retain = data.retain_idx[_sample(len(data.retain_idx), sample_rows, generator)]
    forget = data.forget_idx[_sample(len(data.forget_idx), sample_rows, generator)]
    return _Rows(test_x[test], test_y[test], data.x_train[retain], data.y_train[retain],
                 data.x_train[forget], data.y_train[forget])


def weights_changed(base: nn.Module, candidate: nn.Module) -> bool:
    base_state, candidate_state = base.state_dict(), candidate.state_dict()
    if base_state.keys() != candidate_state.keys():
        return True
    return any(not torch.equal(base_state[k].cpu(), candidate_state[k].cpu())
               for k in base_state)


class Gate:
    """The gate of one request: the base model's outputs on the request's samples are taken
    once, then any number of candidates are judged against them."""

    def __init__(self, base: nn.Module, data: UnlearningData, thresholds: GateThresholds,
                 device: torch.device, seed: int = 0):
        self.base, self.data, self.thresholds = base, data, thresholds
        self.device, self.seed = device, seed
        self.rows = gate_rows(data, thresholds.sample_rows, seed)
        self.base_out = _Outputs.of(base, self.rows, device)

    def judge(self, candidate: nn.Module, *, exact: bool = False) -> GateVerdict:
        rows, base_out, thresholds = self.rows, self.base_out, self.thresholds
        cand_out = _Outputs.of(candidate, rows, self.device)
        figures: dict[str, float | None] = {
            "base_test_accuracy": base_out.test_acc, "test_accuracy": cand_out.test_acc,
            "base_retain_accuracy": base_out.retain_acc,
            "retain_accuracy": cand_out.retain_acc,
            "base_forget_accuracy": base_out.forget_acc,
            "forget_accuracy": cand_out.forget_acc,
            "rows": {"test": len(rows.test_y), "retain": len(rows.retain_y),
                     "forget": len(rows.forget_y)},
        }
        if not cand_out.finite:
            criteria = [Criterion("finite", 0, 1, "min", False,
                                  "the candidate outputs NaN or infinity")]
            return GateVerdict(False, criteria, figures, exact, thresholds.model_dump())
        criteria = [_changed(self.base, candidate), *_utility(base_out, cand_out, thresholds)]
        if self.data.forget_classes:
            criteria.append(_share_bound("class_forget_accuracy", cand_out.forget_acc,
                                         len(rows.forget_y), thresholds.class_forget_max, "max",
                                         "forgotten-class accuracy", thresholds.z))
        else:
            criteria += _random_forgetting(cand_out, rows, thresholds, self.seed, figures)
        passed = exact or all(c.passed for c in criteria)
        return GateVerdict(passed, criteria, figures, exact, thresholds.model_dump())


def judge(base: nn.Module, candidate: nn.Module, data: UnlearningData,
          thresholds: GateThresholds, device: torch.device, *, seed: int = 0,
          exact: bool = False) -> GateVerdict:
    """Measure ``candidate`` against ``base`` on ``data``'s forget request (one-off; a
    :class:`Gate` judges several candidates of one request for the price of one base pass)."""
    return Gate(base, data, thresholds, device, seed).judge(candidate, exact=exact)


def _changed(base: nn.Module, candidate: nn.Module) -> Criterion:
    changed = weights_changed(base, candidate)
    return Criterion("weights_changed", float(changed), 1.0, "min", changed,
                     "weights changed" if changed else "no weight changed: nothing was unlearned")


def allowed_drop(base_correct: torch.Tensor, cand_correct: torch.Tensor, max_drop: float,
                 z: float) -> float:
    """Points accuracy may fall from the base model's to a candidate's on the same rows:
    ``max_drop``, or ``z`` standard errors of the difference when that is more."""
    return max(max_drop, z * paired_se(base_correct, cand_correct))


def _utility(base: _Outputs, cand: _Outputs, thresholds: GateThresholds) -> list[Criterion]:
    criteria = []
    for name, base_correct, cand_correct in (
            ("test_accuracy", base.test_correct, cand.test_correct),
            ("retain_accuracy", base.retain_correct, cand.retain_correct)):
        allowed = allowed_drop(base_correct, cand_correct, thresholds.max_utility_drop,
                               thresholds.z)
        base_acc, cand_acc = percent(base_correct), percent(cand_correct)
        criteria.append(_minimum(name, cand_acc, base_acc - allowed,
                                 f"{name.replace('_', ' ')} (base {base_acc:.2f}, allowed drop "
                                 f"{allowed:.2f})"))
    return criteria


def beyond_p_value(share: float, n: int, bound: float, kind: str) -> float:
    """p-value of a one-sided exact binomial test that a share (percent) of ``n`` rows lies
    beyond ``bound`` (above it for ``kind`` "max", below for "min"); 1 when it does not."""
    beyond = share > bound if kind == "max" else share < bound
    if not beyond or n == 0:
        return 1.0
    edge = min(max(bound / 100.0, 1e-9), 1 - 1e-9)
    hits = round(share * n / 100.0)
    return float(binomtest(hits, n, edge,
                           alternative="greater" if kind == "max" else "less").pvalue)


def significantly_beyond(share: float, n: int, bound: float, kind: str, z: float) -> bool:
    """How the gate decides a forget-set share: beyond ``bound``, and significantly so at the
    level of ``z``, so a 20-row forget set is not refused for the luck of its draw."""
    return beyond_p_value(share, n, bound, kind) < norm.sf(z)


def _share_bound(name: str, share: float, n: int, bound: float, kind: str, what: str,
                 z: float) -> Criterion:
    """A share (percent) of ``n`` rows held to a bound (see significantly_beyond)."""
    beyond = share > bound if kind == "max" else share < bound
    p_value = beyond_p_value(share, n, bound, kind)
    passed = not significantly_beyond(share, n, bound, kind, z)
    relation = {("max", True): "<=", ("max", False): ">", ("min", True): ">=",
                ("min", False): "<"}[(kind, not beyond)]
    detail = f"{what} {share:.2f} {relation} {bound:.2f}"
    if beyond:
        detail += f" (p = {p_value:.3g} on {n} rows)"
    return Criterion(name, round(share, 2), round(bound, 2), kind, passed, detail)


def _band(names: tuple[str, str], share: float, n: int, reference: float, n_reference: int,
          above: float, below: float, what: str, z: float) -> list[Criterion]:
    """``share`` within ``above``/``below`` points of a reference share measured on
    ``n_reference`` rows, each margin widened to z standard errors of the reference; ``names``
    are those of the upper and the lower bound's criteria."""
    slack = z * proportion_se(reference, n_reference)
    high, low = reference + max(above, slack), reference - max(below, slack)
    return [
        _share_bound(names[0], share, n, high, "max",
                     f"{what} (held-out {reference:.2f} + {high - reference:.2f})", z),
        _share_bound(names[1], share, n, low, "min",
                     f"{what} (held-out {reference:.2f} - {reference - low:.2f})", z),
    ]


def _random_forgetting(cand: _Outputs, rows: _Rows, thresholds: GateThresholds, seed: int,
                       figures: dict) -> list[Criterion]:
    """Accuracy above held-out means remembered and below means over-forgotten; for the
    attack's non-member share it is the other way round."""
    n_forget = len(rows.forget_y)
    criteria = _band(("forget_accuracy_not_remembered", "forget_accuracy_not_overforgotten"),
                     cand.forget_acc, n_forget, cand.test_acc,
                     len(rows.test_y), thresholds.forget_margin_above,
                     thresholds.forget_margin_below, "forget accuracy", thresholds.z)
    mia = membership_shares(cand, rows, seed)
    if mia is None:
        return criteria
    forget_share, held_out_share, n_held_out = mia
    figures["mia_forget_nonmember"] = round(forget_share, 2)
    figures["mia_held_out_nonmember"] = round(held_out_share, 2)
    return criteria + _band(("mia_not_overforgotten", "mia_not_remembered"), forget_share,
                            n_forget, held_out_share, n_held_out, thresholds.mia_margin,
                            thresholds.mia_margin, "share of D_f the attack calls non-member",
                            thresholds.z)


def membership_shares(cand: _Outputs, rows: _Rows, seed: int
                      ) -> tuple[float, float, int] | None:
    """Train a member/non-member attack (logistic regression on confidence and entropy) on
    retain rows against half the test rows; return the share of D_f and of the other half of
    the test rows it calls non-member, and that half's size."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    test_features = mia_features(cand.test_logits, rows.test_y)
    half = len(test_features) // 2
    if half < 10 or len(rows.forget_y) == 0 or len(rows.retain_y) == 0:
        return None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(test_features))
    train_non, held_out = test_features[order[:half]], test_features[order[half:]]
    members = mia_features(cand.retain_logits, rows.retain_y)
    n = min(len(members), half)
    members = members[rng.choice(len(members), size=n, replace=False)]
    train_non = train_non[:n]
    attack = make_pipeline(StandardScaler(), LogisticRegression())
    attack.fit(np.concatenate([members, train_non]),
               np.concatenate([np.full(n, MEMBER), np.full(n, NON_MEMBER)]))
    forget_share = float((attack.predict(mia_features(cand.forget_logits, rows.forget_y))
                          == NON_MEMBER).mean())
    held_out_share = float((attack.predict(held_out) == NON_MEMBER).mean())
    return 100.0 * forget_share, 100.0 * held_out_share, len(held_out)


def percent(correct: torch.Tensor) -> float:
    return 100.0 * float(correct.double().mean()) if len(correct) else 0.0


@dataclass
class _Outputs:
    test_logits: torch.Tensor
    retain_logits: torch.Tensor
    forget_logits: torch.Tensor
    test_correct: torch.Tensor
    retain_correct: torch.Tensor
    forget_correct: torch.Tensor

    @classmethod
    def of(cls, model: nn.Module, rows: _Rows, device: torch.device) -> _Outputs:
        logits = [predict_logits(model, x, device)
                  for x in (rows.test_x, rows.retain_x, rows.forget_x)]
        correct = [lg.argmax(1) == y for lg, y in
                   zip(logits, (rows.test_y, rows.retain_y, rows.forget_y), strict=True)]
        return cls(*logits, *correct)

    @property
    def finite(self) -> bool:
        return all(bool(torch.isfinite(lg).all())
                   for lg in (self.test_logits, self.retain_logits, self.forget_logits))

    @property
    def test_acc(self) -> float:
        return percent(self.test_correct)

    @property
    def retain_acc(self) -> float:
        return percent(self.retain_correct)

    @property
    def forget_acc(self) -> float:
        return percent(self.forget_correct)
