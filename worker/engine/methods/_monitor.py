"""Where a core method stands against the acceptance gate, and the two loops that steer it there.

The job runner publishes a version only if :mod:`worker.engine.gate` passes it: held-out and
retain accuracy within ``max_utility_drop`` points of the base version's, a forgotten class at
most ``class_forget_max`` percent, scattered samples' forget accuracy inside a window around
the held-out accuracy. The core methods aim at those same targets (the ``GateThresholds``
defaults) instead of running a fixed schedule tuned on one model:

- :class:`Monitor` measures forget, held-out (the test rows of retained classes) and, for
  methods allowed to read it, retain accuracy on small fixed samples, and holds the targets;
- :func:`descend` takes rounds of a method's forgetting step until the target is met, undoes
  any round that costs more utility than the gate allows (halving the step), doubles a step
  that barely moves, stops when progress stalls (keeping its best point), and bisects the
  round that crosses a random-forgetting level onto it; the point it ends at is confirmed on
  the gate's rows (:meth:`Monitor.confirmed`), and one kept short of the target that they
  refuse gives way to the farthest blend towards the start that they confirm;
- :func:`repair` takes rounds of a method's recovering step until the utility lost is back
  under half the budget, undoing a round that costs utility or brings a class back, and
  returning to its last acceptable point if scattered samples come back with the utility;
- :func:`relative_lr` sizes a first step to the model: the learning rate at which a step moves
  the weights by a given share of their norm.

Targets: a class is driven to four fifths of ``class_forget_max`` (less when the monitor's
sample is small); scattered samples to where a retrained model is expected to score on them,
kept within the middle half of the gate's window; utility may drop what the gate allows
(``max_utility_drop`` points, or z standard errors of its reading when more), less the error of
the gate's reading given the monitor's (one standard error of the drop, finite-population
corrected: the gate reads up to ``sample_rows`` rows, which on a small test split are the
monitor's rows and a few more). Methods that may not read D_r (projected-gradient on a
chained request) stand in half the share of held-out rows they lose for the retain accuracy
they cannot see.

Each method keeps its own steps and losses in its own file; this module only decides how far
to go, and takes back what went too far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from worker.engine.device import eval_batch_size
from worker.engine.gate import (
    GateThresholds,
    allowed_drop,
    paired_se,
    percent,
    proportion_se,
    significantly_beyond,
)
from worker.engine.methods._base import ProgressFn, UnlearningData, UnlearningTask, no_progress
from worker.engine.methods._common import accuracy, outputs, predictions, random_rows

# The gate's defaults: a deletion request may override them, but a method aims at these.
GATE = GateThresholds()
# Rows that place a random-forgetting level (test and retain accuracy): every row up to this.
LEVEL_ROWS = 10_000


@dataclass
class Score:
    """Accuracies (percent) on the monitor's samples after ``step`` rounds (fractional for a
    point inside a round); ``retain`` is None for methods that may not read D_r. ``lost``: the
    share of held-out rows the base model got right that are now wrong. ``forget_confidence``
    and ``held_out_confidence``: mean true-class probability (percent), which moves before
    accuracy does."""

    step: float
    forget: float
    held_out: float | None
    retain: float | None = None
    lost: float | None = None
    forget_confidence: float | None = None
    held_out_confidence: float | None = None
    # Standard errors (points) of the held-out and retain changes since the start.
    held_out_noise: float = 0.0
    retain_noise: float = 0.0

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def retained_class_test_rows(data: UnlearningData) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split without the forgotten classes (the whole split for random forgetting)."""
    if not data.forget_classes:
        return data.x_test, data.y_test
    keep = ~torch.isin(data.y_test, torch.tensor(data.forget_classes, dtype=data.y_test.dtype))
    return data.x_test[keep], data.y_test[keep]


def level_rows(count: int, generator: torch.Generator) -> torch.Tensor | slice:
    """Which of ``count`` rows place a level: all of them up to LEVEL_ROWS, else that many."""
    return slice(None) if count <= LEVEL_ROWS else random_rows(count, LEVEL_ROWS, generator)


def retrained_forget_level(*, test_acc: float, forget_acc: float, retain_acc: float | None,
                           retained: int, forgotten: int, exponent: float = 1.0,
                           difficulty_weight: float = 1.0) -> float:
    """Accuracy (percent) on D_f expected of a model retrained on D_r alone, from the base model.

    D_f is unseen data to such a model, so start from the test accuracy, shifted by how much
    harder (or easier) the base model finds D_f than D_r. A model trained on fewer rows errs
    more: scale the error by (|D|/|D_r|)^exponent, a power-law learning curve.
    """
    level = test_acc
    if retain_acc is not None:
        level += difficulty_weight * (forget_acc - retain_acc)
    error = min(max(100.0 - level, 0.0), 100.0)
    return 100.0 - error * ((retained + forgotten) / retained) ** exponent


def gate_window(held_out: float) -> tuple[float, float]:
    """The middle half of the gate's random-forgetting window around ``held_out``: a level
    there passes even when the held-out accuracy moves a little while the method works."""
    low = held_out - GATE.forget_margin_below
    high = held_out + GATE.forget_margin_above
    centre, quarter = (low + high) / 2, (high - low) / 4
    return centre - quarter, centre + quarter


def class_target(forget_rows: int, population: int) -> float:
    """Forget accuracy (percent) a forgotten class is driven to on ``forget_rows`` of its
    ``population`` rows: four fifths of the gate's limit, lower still when the sample is so
    small that its noise (z standard errors at the limit, finite-population corrected: none
    when the sample is the whole class) could hide a miss."""
    limit = GATE.class_forget_max
    if forget_rows == 0:
        return 0.8 * limit
    share = limit / 100.0
    correction = math.sqrt(max(0.0, 1.0 - forget_rows / max(population, 1)))
    noise = GATE.z * 100.0 * math.sqrt(share * (1.0 - share) / forget_rows) * correction
    return max(0.0, min(0.8 * limit, limit - noise))


def gate_prediction_error(rows: int, population: int) -> float:
    """Standard errors (of a change measured on ``rows`` random rows of ``population``) by
    which the gate's own measurement, on up to GATE.sample_rows of the population, may still
    differ from ours: none when both read every row, the finite-population factor
    sqrt(1 - rows/population) when the gate reads every row, and slightly over one standard
    error when each reads a small sample of a large set."""
    if rows == 0 or population == 0:
        return 0.0
    gate_rows = min(GATE.sample_rows, population)
    return math.sqrt(max(0.0, 1.0 + rows / gate_rows - 2.0 * rows / population))


def runner_up_labels(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row, the most likely class other than ``y``."""
    return logits.scatter(1, y[:, None], float("-inf")).argmax(1)


def true_class_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row, the true class's logit minus the largest other logit (negative: misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.gather(1, runner_up_labels(logits, y)[:, None]).squeeze(1)


def rows_a_retrained_model_misses(logits: torch.Tensor, y: torch.Tensor,
                                  level: float, extra: float) -> torch.Tensor:
    """Indices of the rows a model retrained without them is expected to get wrong: all but
    the ``level`` percent (less ``extra`` points, so the level stays reachable) with the
    largest true-class margin under the base model. Even a model that fits every row keeps
    the order: the rows it fits with the least margin are those that only memorising
    explains. On the zoo's pairs the base model's margin on D_f ranks the rows a retrained
    model gets right with a ROC AUC of 0.91-0.93 on the synthetic table and 0.94-1.00 on the
    digits (seeds 0-2), 0.84 on the All-CNN (seed 0), but only 0.53-0.65 on the ResNet (seeds
    0, 1), whose margins say little (benchmarks/tuning/memorising/)."""
    kept = round(len(y) * max(0.0, level - extra) / 100.0)
    order = true_class_margin(logits, y).argsort(descending=True)
    return order[kept:].sort().values


class Monitor:
    """Forget, held-out and (optionally) retain accuracy on fixed random samples, and the
    targets they are held to. Call :meth:`begin` on the base model before anything else."""

    def __init__(self, task: UnlearningTask, *, samples: int, generator: torch.Generator,
                 read_retain: bool, class_target_acc: float | None = None):
        data = task.data
        self.data, self.device, self.generator = data, task.device, generator
        forget = data.forget_idx[random_rows(len(data.forget_idx), samples, generator)]
        self.forget_x, self.forget_y = data.x_train[forget], data.y_train[forget]
        test_x, test_y = retained_class_test_rows(data)
        test = random_rows(len(test_x), samples, generator)
        self.held_out_x, self.held_out_y = test_x[test], test_y[test]
        self.read_retain = read_retain
        if read_retain:
            retain = data.retain_idx[random_rows(len(data.retain_idx), samples, generator)]
            self.retain_x, self.retain_y = data.x_train[retain], data.y_train[retain]
        # Per held-out (retain) row, whether the base model gets it right; set by begin().
        self.base_correct: torch.Tensor | None = None
        self.base_retain_correct: torch.Tensor | None = None
        self.class_forgetting = bool(data.forget_classes)
        self.forget_rows, self.test_rows = len(data.forget_idx), len(test_x)
        # (monitor's rows, population) of each utility figure: what the gate's differs by.
        self.utility_rows = {"held_out": (len(self.held_out_y), self.test_rows),
                             "retain": (min(samples, len(data.retain_idx)),
                                        len(data.retain_idx))}
        self.class_target = (class_target(len(forget), len(data.forget_idx))
                             if class_target_acc is None else class_target_acc)
        self.budget = GATE.max_utility_drop
        self._whole_rows()
        self.whole_base: list[torch.Tensor] | None = None  # the base model's, by begin()
        self.start: Score | None = None
        self.level: float | None = None  # random forgetting's stopping level
        self.estimate: float | None = None  # the retrained model's expected level, unclamped

    # --- measuring -----------------------------------------------------------------------

    def score(self, model: nn.Module, step: float) -> Score:
        retain, retain_noise = None, 0.0
        if self.read_retain:
            retain_correct = _correct(outputs(model, self.retain_x, self.device), self.retain_y)
            retain = percent(retain_correct)
            if self.base_retain_correct is not None:
                retain_noise = paired_se(self.base_retain_correct, retain_correct)
        held_out = outputs(model, self.held_out_x, self.device)
        correct = _correct(held_out, self.held_out_y)
        lost, held_out_noise = None, 0.0
        if self.base_correct is not None and len(correct):
            lost = percent(self.base_correct & ~correct)
            held_out_noise = paired_se(self.base_correct, correct)
        forget = outputs(model, self.forget_x, self.device)
        return Score(step, percent(_correct(forget, self.forget_y)), percent(correct),
                     retain, lost, _confidence(forget, self.forget_y),
                     _confidence(held_out, self.held_out_y), held_out_noise, retain_noise)

    def forget_accuracy(self, model: nn.Module) -> float:
        return accuracy(model, self.forget_x, self.forget_y, self.device)

    def begin(self, model: nn.Module, *, retain_accuracy: float | None = None,
              level_exponent: float = 1.0, difficulty_weight: float = 1.0) -> Score:
        """Score the base model and, for random forgetting, place the level: where a retrained
        model is expected to score on D_f (:func:`retrained_forget_level`, from test accuracy
        and, when known, the base model's retain accuracy on up to LEVEL_ROWS rows each), kept
        within the middle half of the gate's window. ``retain_accuracy`` stands in for reading
        D_r (a method that may not read it passes what it cached, or None)."""
        self.base_correct = (predictions(model, self.held_out_x, self.device)
                             == self.held_out_y)
        if self.read_retain:
            self.base_retain_correct = (predictions(model, self.retain_x, self.device)
                                        == self.retain_y)
        self.start = self.score(model, 0)
        self.whole_base = self._whole_correct(model)
        if self.class_forgetting:
            return self.start
        data = self.data
        test_acc = percent(self.whole_base[0])
        if retain_accuracy is None and self.read_retain:
            retain_accuracy = percent(self.whole_base[1])
        self.estimate = retrained_forget_level(
            test_acc=test_acc, forget_acc=self.start.forget, retain_acc=retain_accuracy,
            retained=len(data.retain_idx), forgotten=len(data.forget_idx),
            exponent=level_exponent, difficulty_weight=difficulty_weight)
        low, high = gate_window(test_acc)
        self.level = min(max(self.estimate, low), high)
        return self.start

    def _whole_rows(self) -> None:
        """Every test row of the retained classes and (when read) every D_r row, up to
        LEVEL_ROWS each, drawn with a generator of their own (the method's draws stay as they
        were): where the level is placed and a stopping point confirmed (a 500-row sample's
        ±2 points of noise would go straight into either)."""
        generator = torch.Generator().manual_seed(0)
        test_x, test_y = retained_class_test_rows(self.data)
        test = torch.arange(len(test_x))[level_rows(len(test_x), generator)]
        # Indices, not copies: up to LEVEL_ROWS training rows held for the whole job would
        # be gigabytes of large images; each read gathers one evaluation batch at a time.
        self.whole = [(test_x, test_y, test)]
        if self.read_retain:
            retain = self.data.retain_idx
            self.whole.append((self.data.x_train, self.data.y_train,
                               retain[level_rows(len(retain), generator)]))

    def _whole_correct(self, model: nn.Module) -> list[torch.Tensor]:
        batch = eval_batch_size(self.device, 256)  # outputs' own batches: the same logits
        return [torch.cat([_correct(outputs(model, x[chunk], self.device, batch), y[chunk])
                           for chunk in rows.split(batch)])
                for x, y, rows in self.whole]

    def base_retain_accuracy(self) -> float | None:
        """The base model's accuracy (percent) on every D_r row up to LEVEL_ROWS, when the
        monitor reads D_r (None otherwise): what placed the level, for a method to keep."""
        if self.whole_base is None or not self.read_retain:
            return None
        return percent(self.whole_base[1])

    def confirmed(self, model: nn.Module, scale: float = 1.0) -> bool:
        """Whether utility holds on every row (up to LEVEL_ROWS) of the sets the gate samples,
        by the gate's own rule, ``scale`` times: a drop of at most the budget, or z standard
        errors of it when more (without D_r, half the held-out share lost stands in for its
        drop). The monitor's small samples chose this point among many candidates, so their
        reading of it is optimistic; read on the gate's rows (all of them on a split of up to
        GATE.sample_rows), it is the gate's."""
        base = self.whole_base
        assert base is not None, "begin() first"
        now = self._whole_correct(model)
        for before, after in zip(base, now, strict=True):
            allowed = scale * allowed_drop(before, after, self.budget, GATE.z)
            if percent(before) - percent(after) > allowed:
                return False
        if not self.read_retain and len(base[0]):
            return percent(base[0] & ~now[0]) / 2 <= scale * self.budget
        return True

    # --- judging -------------------------------------------------------------------------

    def forgotten(self, score: Score) -> bool:
        """At the target: a class at most class_target, scattered samples at most the level."""
        if self.class_forgetting:
            return score.forget <= self.class_target
        return self.level is not None and score.forget <= self.level

    def gate_bounds(self, score: Score) -> tuple[float, float]:
        """Scattered samples: the gate's window for forget accuracy around the current
        held-out accuracy, each margin widened to z standard errors of the held-out figure on
        the rows the gate will see (up to GATE.sample_rows of the test split)."""
        held_out = score.held_out or 0.0
        slack = GATE.z * proportion_se(held_out, min(GATE.sample_rows, self.test_rows))
        return (held_out - max(GATE.forget_margin_below, slack),
                held_out + max(GATE.forget_margin_above, slack))

    def _beyond(self, forget: float, bound: float, kind: str) -> bool:
        """As the gate decides a forget-set share, on the rows the monitor measured."""
        return significantly_beyond(forget, len(self.forget_y), bound, kind, GATE.z)

    def remembered(self, score: Score) -> bool:
        """Forgetting undone: a class above its target, scattered samples above the gate's
        window around the current held-out accuracy."""
        if self.class_forgetting:
            return score.forget > self.class_target
        return self._beyond(score.forget, self.gate_bounds(score)[1], "max")

    def overforgotten(self, score: Score) -> bool:
        """Scattered samples below the gate's window: D_f now stands out the other way."""
        return (not self.class_forgetting
                and self._beyond(score.forget, self.gate_bounds(score)[0], "min"))

    def acceptable(self, score: Score) -> bool:
        """What the gate will ask, as far as the samples tell: utility kept, and D_f forgotten
        (a class at most its target, scattered samples inside the gate's window)."""
        return (self.utility_kept(score) and not self.remembered(score)
                and not self.overforgotten(score))

    def utility_drop(self, score: Score, scale: float = 1.0) -> float:
        """Points the worse of held-out and retain accuracy lies below its starting value, as
        the gate will judge it, against ``scale`` times its allowance: plus the error of the
        gate's reading given ours (a drop our sample only guesses at may be larger on the
        gate's rows: one standard error of it, finite-population corrected, see
        :func:`gate_prediction_error`), less what the gate allows beyond ``budget`` for its own
        noise (z standard errors of its reading, when more), ``scale`` times.

        Without D_r, half the share of held-out rows lost (right before, wrong now) stands in
        for the retain accuracy's drop. The net held-out figure alone lets rows a step gains
        (a forgotten class's former confusions, boundary rows that flip both ways) hide the
        ones it loses, while the base model gets nearly every retained row right, so each
        one it loses counts; on the figures behind the defaults (benchmarks/tuning/
        self-calibration/) half the lost share bounded the retain drop near the budget on
        MLPs and CNNs alike, where the whole share overstated it two- to threefold."""
        assert self.start is not None, "begin() first"
        drops = [self.gated_drop("held_out", self.start.held_out - score.held_out,
                                 score.held_out_noise, scale)]
        if score.retain is not None and self.start.retain is not None:
            drops.append(self.gated_drop("retain", self.start.retain - score.retain,
                                         score.retain_noise, scale))
        elif not self.read_retain and score.lost is not None:
            drops.append(score.lost / 2)
        return max(drops)

    def gated_drop(self, figure: str, drop: float, noise: float, scale: float = 1.0) -> float:
        """A drop of ``figure`` ("held_out" or "retain") our rows measured with standard error
        ``noise``, as the gate will judge it against ``scale`` budgets (see
        :meth:`utility_drop`)."""
        rows, population = self.utility_rows[figure]
        gate_noise = noise * math.sqrt(rows / min(GATE.sample_rows, population))
        allowed_beyond = scale * max(0.0, GATE.z * gate_noise - self.budget)
        return drop + noise * gate_prediction_error(rows, population) - allowed_beyond

    def utility_kept(self, score: Score, scale: float = 1.0) -> bool:
        return self.utility_drop(score, scale) <= scale * self.budget


class Weights:
    """The tensors a method changes, saved, restored and blended together."""

    def __init__(self, tensors: Iterable[torch.Tensor]):
        self.tensors = list(tensors)

    def save(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def load(self, saved: Sequence[torch.Tensor]) -> None:
        for tensor, value in zip(self.tensors, saved, strict=True):
            tensor.copy_(value)

    @torch.no_grad()
    def blend(self, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor],
              share: float) -> None:
        """``share`` of the way from ``before`` to ``after`` (0: before)."""
        for tensor, start, end in zip(self.tensors, before, after, strict=True):
            tensor.copy_(torch.lerp(start, end, share))

    def finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors)



def _correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) == y if len(y) else torch.zeros(0, dtype=torch.bool)


def _confidence(logits: torch.Tensor, y: torch.Tensor) -> float | None:
    if len(y) == 0:
        return None
    return 100.0 * float(logits.double().softmax(1).gather(1, y[:, None]).mean())


def relative_lr(weights: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                share: float) -> float:
    """The learning rate at which one step along ``gradients`` moves ``weights`` by ``share``
    of their norm: step sizes in units of the model, not of its loss's scale."""
    weight_norm = math.sqrt(sum(float(w.detach().double().pow(2).sum()) for w in weights))
    grad_norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gradients))
    if grad_norm == 0 or not math.isfinite(grad_norm):
        return 0.0
    return share * weight_norm / grad_norm


# --- The loops -----------------------------------------------------------------------------

@dataclass
class Run:
    """What a loop did: why it stopped, its accepted scores, and its step size at the end."""

    stop_reason: str
    lr: float
    rounds: int = 0  # rounds taken, undone ones included
    kept: float = 0  # accepted rounds kept (fractional when the last was bisected)
    undone: int = 0
    history: list[dict] = field(default_factory=list)

    def summary(self, prefix: str = "") -> dict:
        return {f"{prefix}stop_reason": self.stop_reason, f"{prefix}rounds": self.rounds,
                f"{prefix}rounds_undone": self.undone, f"{prefix}kept_rounds": round(self.kept, 4),
                f"{prefix}final_lr": self.lr}


Step = Callable[[int, float], None]  # (round, learning rate): one round of the method's step


def descend(monitor: Monitor, model: nn.Module, weights: Weights, step: Step, *, lr: float,
            max_rounds: int, bisect_steps: int = 4, max_undone: int = 6,
            aimed_rounds: int = 8, patience: int = 4, budget_scale: float = 1.0,
            adaptive: bool = True, on_undo: Callable[[], None] | None = None,
            progress: ProgressFn = no_progress) -> Run:
    """Rounds of ``step`` until :meth:`Monitor.forgotten`, held to the utility budget.

    A round that leaves held-out or retain accuracy more than the budget below the start (or a
    non-finite weight) is undone and the step halved (``on_undo`` lets the method reset its
    optimizer); once the step is ``2**max_undone`` times smaller than the first, the loop gives
    up ("utility-limit"): the budget is spent. A method whose repair phase follows may spend
    ``budget_scale`` budgets here and win the excess back there. A round accepted with under
    half the progress ``aimed_rounds`` would need (forget accuracy and confidence towards the
    target) doubles the step, unless a larger one was already undone. After ``patience``
    accepted rounds in a row that do not lower the best forget accuracy so far the loop stops
    ("stalled"). A loop that stops short of the target keeps its best accepted point (the
    lowest forget accuracy). The round that crosses a random-forgetting level is bisected onto
    it (``bisect_steps`` halvings; with none, the closer of the round's two ends is kept). A
    point at the target ends the loop only once the gate's rows confirm its utility
    (:meth:`Monitor.confirmed`, to ``budget_scale`` budgets); otherwise its round is undone.
    A point kept short of the target is confirmed too; where the gate's rows refuse it, the
    farthest blend from the start towards it that they confirm is kept instead (four
    halvings, each one more read of those rows).

    ``adaptive=False`` is a paper's fixed schedule: no round is undone for its utility, the
    step is never halved or doubled and a stall does not stop the loop; only the target or
    ``max_rounds`` ends it (a non-finite weight ends it too, at the last finite point).
    """
    start = monitor.start
    assert start is not None, "begin() first"
    run = Run("max-rounds", lr, history=[start.as_dict()])
    if monitor.forgotten(start):
        run.stop_reason = "already-forgotten"
        return run
    target = monitor.class_target if monitor.class_forgetting else monitor.level
    gap = max(start.forget - target, 1e-6)
    # In confidence: towards nothing for a class, towards held-out rows' for scattered samples.
    confidence_target = 0.0 if monitor.class_forgetting else start.held_out_confidence
    confidence_gap = max(start.forget_confidence - confidence_target, 1e-6)
    previous, ceiling, floor = start, math.inf, lr / 2**max_undone
    best: tuple[float, float, list[torch.Tensor]] | None = None  # forget, kept, weights
    stalled = 0
    origin = weights.save() if adaptive else None
    for round_ in range(1, max_rounds + 1):
        before = weights.save()
        step(round_, run.lr)
        run.rounds = round_
        progress(round_ / max_rounds)
        score = monitor.score(model, run.kept + 1)
        if not adaptive and not weights.finite():
            weights.load(before)
            run.stop_reason = "diverged"
            break
        undo = adaptive and (not weights.finite()
                             or not monitor.utility_kept(score, budget_scale))
        if undo:
            run.history.append(score.as_dict() | {"undone": True, "lr": run.lr})
        else:
            kept_before = run.kept
            run.kept += 1
            run.history.append(score.as_dict() | {"lr": run.lr})
            if monitor.forgotten(score):
                if not monitor.class_forgetting:
                    _bisect(monitor, model, weights, before, previous, score, run, bisect_steps)
                if not adaptive or monitor.confirmed(model, budget_scale):
                    run.stop_reason = "forgotten"
                    return run
                # Every row of the gate's sets refuses what the samples accepted: undone.
                run.kept = kept_before
                run.history.append({"step": kept_before + 1, "unconfirmed": True,
                                    "lr": run.lr})
                undo = True
        if undo:
            weights.load(before)
            ceiling, run.lr = run.lr, run.lr / 2
            run.undone += 1
            if on_undo is not None:
                on_undo()
            if run.lr < floor:
                run.stop_reason = "utility-limit"
                break
            continue
        if not adaptive:
            previous = score
            continue
        if best is None or score.forget < best[0]:
            best, stalled = (score.forget, run.kept, weights.save()), 0
        else:
            stalled += 1
            if stalled >= patience:
                run.stop_reason = "stalled"
                break
        slow = 0.5 / aimed_rounds
        if ((previous.forget - score.forget) / gap < slow
                and (previous.forget_confidence - score.forget_confidence) / confidence_gap < slow
                and 2 * run.lr < ceiling):
            run.lr *= 2
        previous = score
    if best is not None and best[1] != run.kept:
        weights.load(best[2])
        run.kept = best[1]
        run.history.append({"step": best[1], "forget": best[0], "restored": True})
    if origin is not None and run.kept > 0 and not monitor.confirmed(model, budget_scale):
        _confirmed_share(monitor, model, weights, origin, run, budget_scale)
    return run


@torch.no_grad()
def _confirmed_share(monitor: Monitor, model: nn.Module, weights: Weights,
                     origin: list[torch.Tensor], run: Run, budget_scale: float,
                     steps: int = 4) -> None:
    """A loop that stopped short keeps a point only its small samples judged: when the gate's
    rows refuse its utility, keep instead the farthest blend from the loop's start towards it
    that they confirm (``steps`` halvings; the start itself, which changed nothing, at worst).
    Without it the gate would refuse the point for utility; a blend may still forget enough."""
    end = weights.save()
    low, high = 0.0, 1.0  # the start is confirmed (nothing lost); the end is not
    for _ in range(steps):
        middle = (low + high) / 2
        weights.blend(origin, end, middle)
        if monitor.confirmed(model, budget_scale):
            low = middle
        else:
            high = middle
    weights.blend(origin, end, low)
    run.kept *= low
    run.history.append({"step": run.kept, "unconfirmed_end": True, "kept_share": low,
                        "forget": monitor.forget_accuracy(model)})


@torch.no_grad()
def _bisect(monitor: Monitor, model: nn.Module, weights: Weights, before: list[torch.Tensor],
            start: Score, end: Score, run: Run, steps: int) -> None:
    """Keep the point of the last round whose forget accuracy is closest to the level: a round
    moves it by several points, as much as the level's own precision."""
    level = monitor.level
    after = weights.save()
    tried = {0.0: start.forget, 1.0: end.forget}
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        weights.blend(before, after, middle)
        tried[middle] = monitor.forget_accuracy(model)
        if tried[middle] <= level:
            high = middle
        else:
            low = middle
    # Ties go to the later point: the round's end unless an earlier point is strictly closer.
    share = min(tried, key=lambda point: (abs(tried[point] - level), -point))
    weights.blend(before, after, share)
    run.kept += share - 1
    if 0.0 < share < 1.0:  # held-out accuracy is not measured there: the level needs none
        run.history.append(Score(run.kept, tried[share], None).as_dict())


def repair(monitor: Monitor, model: nn.Module, weights: Weights, step: Step, *, lr: float,
           max_rounds: int, min_rounds: int = 0, max_undone: int = 3,
           on_undo: Callable[[], None] | None = None, progress: ProgressFn = no_progress) -> Run:
    """Rounds of ``step`` (training on retained data) until the utility lost is under half the
    budget with D_f still forgotten, after at least ``min_rounds``, and the gate's rows confirm
    the budget holds (:meth:`Monitor.confirmed`); a round that costs utility is undone and the
    step halved.

    A round that brings a forgotten class back (above its target, or above where the repair
    found it when the forgetting stopped short of the target) is undone and ends the repair:
    training on retained data must not give back what the forgetting achieved. Scattered
    samples come back gradually as the retained data's accuracy does (they are like it): the
    repair goes on, and if it ends with them remembered it returns to its last point the gate
    would accept (utility within the budget, D_f inside the window), when there was one."""
    run = Run("recovered", lr)
    score = monitor.score(model, 0)
    run.history.append(score.as_dict() | {"phase": "repair"})

    def recovered(current: Score) -> bool:
        return (run.kept >= min_rounds and monitor.utility_drop(current) <= monitor.budget / 2
                and not monitor.remembered(current) and monitor.confirmed(model))

    if max_rounds == 0 or recovered(score):
        return run
    accepted = (score, 0, weights.save()) if monitor.acceptable(score) else None
    class_ceiling = max(score.forget, monitor.class_target)
    in_a_row = 0
    for round_ in range(1, max_rounds + 1):
        before, last = weights.save(), score
        step(round_, run.lr)
        run.rounds = round_
        progress(round_ / max_rounds)
        score = monitor.score(model, round_)
        entry = score.as_dict() | {"phase": "repair", "lr": run.lr}
        if monitor.class_forgetting and score.forget > class_ceiling:
            weights.load(before)
            run.history.append(entry | {"undone": True})
            run.undone += 1
            run.stop_reason = "forget-set-returns"
            return run
        # A diverged round (a non-finite weight) counts as one that cost utility.
        if (not weights.finite()
                or monitor.utility_drop(score) > monitor.utility_drop(last) + 0.5):
            weights.load(before)
            run.history.append(entry | {"undone": True})
            run.lr /= 2
            run.undone += 1
            in_a_row += 1
            score = last
            if on_undo is not None:
                on_undo()
            if in_a_row >= max_undone:
                run.stop_reason = "no-gain"
                break
            continue
        in_a_row = 0
        run.kept += 1
        run.history.append(entry)
        if monitor.acceptable(score):
            accepted = (score, run.kept, weights.save())
        if recovered(score):
            return run
    else:
        run.stop_reason = "max-rounds"
    if accepted is not None and not monitor.acceptable(score):
        weights.load(accepted[2])
        run.kept = accepted[1]
        run.stop_reason += ", back to the last acceptable point"
        run.history.append(accepted[0].as_dict() | {"phase": "repair", "restored": True})
    return run
