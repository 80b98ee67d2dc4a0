"""DeepClean: reset the weights whose Fisher information is far larger on D_f than on D_r, then
fine-tune those weights on D_r (the paper's: every other weight stays bit-identical; see
``finetune_scope`` for Lethe's default).

The Fisher diagonals, the ratio F_f / (F_r + ε), the reset to zero and the fine-tuning of the
reset weights alone follow the paper (methods.md); a D_r sample estimates F_r, and ε is set
per parameter tensor (see fisher_ratio).

Lethe's additions (the monitor and its loops are shared, in ``_monitor.py``):

- fine-tuning runs pass by pass (each over a fresh half of D_r) until the held-out and retain
  accuracy lost (on small samples) are back under half the acceptance gate's budget, at least
  one pass and at most finetune_epochs; a pass that costs accuracy is undone and the step
  halved, one that brings a class back is undone and ends it, and when scattered samples
  come back with the retained data's accuracy it returns to its last acceptable point;
  passes augment images as the training recipe did (unaugmented passes overfit the half of
  D_r they see);
- when fine-tuning the reset weights alone leaves retained accuracy outside that budget with
  the forget set forgotten (an underfit model, whose accuracy a 1% reset costs more of than
  its few weights win back), the same passes go on training every weight
  (``finetune_scope`` 'reset-then-all'; 'reset' is the paper's, where every other weight
  stays bit-identical);
- when the reset and fine-tuning leave the forget set known (a class above the gate's limit,
  scattered samples above the gate's window around held-out accuracy: a top 1% of weights
  often holds little that is specific to scattered samples), the method starts again from the
  base weights with twice the share of weights reset, up to ``max_resets`` times, and keeps
  the attempt closest to what the gate asks, among those that keep utility when any does (an
  attempt no closer than the one before ends the search: there D_f's memory is spread too
  thin for a reset to reach; so does one whose fine-tuning could not win utility back, as a
  wider reset costs more: on the zoo's ResNet the 8% reset that followed a costly 4% one
  kept 63.6% retain accuracy of 99.6%).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad, vmap

from worker.engine.device import autocast_for
from worker.engine.inputs import TokenBatch
from worker.engine.methods._base import (
    MethodParams,
    ProgressFn,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    no_progress,
    register_method,
)
from worker.engine.methods._common import (
    evaluating,
    freeze_norm_statistics,
    only_these_trainable,
    progress_span,
    random_rows,
    working_copy,
)
from worker.engine.methods._monitor import Monitor, Run, Score, Weights, repair
from worker.engine.methods.finetune import DEFAULT_LR_DIVISOR
from worker.engine.training import (
    augment_images,
    iterate_batches,
    make_optimizer,
    seeded_generator,
)


class Params(MethodParams):
    fisher_labels: Literal["true", "predicted"] = Field(
        "true",
        description="Labels in the log-likelihood: the dataset's ('true', as SSD does) or "
                    "one drawn per sample from the model's own predictive distribution "
                    "('predicted', a one-sample estimate of the true Fisher).",
    )
    fisher_forget_samples: int = Field(
        5000, ge=1, le=1_000_000, description="At most this many D_f rows enter F_f.")
    fisher_retain_samples: int = Field(
        1000, ge=1, le=1_000_000, description="D_r rows sampled for F_r.")
    fisher_chunk: int = Field(
        32, ge=1, le=4096,
        description="Samples whose per-sample gradients are held in memory at once.",
    )
    selection: Literal["top-fraction", "threshold"] = Field(
        "top-fraction",
        description="Reset the top_fraction of weights by ratio F_f/(F_r+ε), or every weight "
                    "whose ratio exceeds ratio_threshold.",
    )
    top_fraction: float = Field(
        0.01, gt=0, le=1, description="Share of the eligible weights reset by 'top-fraction'.")
    reset_scope: Literal["weights", "all"] = Field(
        "weights",
        description="Which parameters may be reset: 'weights' (conv and linear weight "
                    "matrices) or 'all' (biases and normalisation scales too; zeroing a "
                    "BatchNorm scale silences its whole channel).",
    )
    ratio_threshold: float = Field(
        10.0, gt=0, description="Ratio above which 'threshold' resets a weight.")
    epsilon: float = Field(
        1.0, gt=0, le=1e6,
        description="ε in F_f/(F_r+ε), in units of the mean retain Fisher of the weight's own "
                    "parameter tensor. A tiny ε lets weights that neither set uses much (F_r≈0) "
                    "crowd out the weights D_f actually relies on; a huge one ranks by F_f "
                    "alone.",
    )
    finetune_epochs: int = Field(
        8, ge=0, le=100,
        description="At most this many passes over a finetune_fraction of D_r training the "
                    "reset weights; they stop once retained accuracy is back within half the "
                    "acceptance gate's budget (at least one pass; 0: reset only).")
    finetune_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of D_r drawn afresh for each fine-tuning pass.")
    max_resets: int = Field(
        4, ge=1, le=20,
        description="Attempts in all: after one that leaves D_f known, start again from the "
                    "base weights resetting twice the share (top-fraction) or above half the "
                    "ratio (threshold).")
    finetune_scope: Literal["reset", "reset-then-all", "all"] = Field(
        "reset-then-all",
        description="Weights fine-tuning trains: only the reset ones ('reset', the paper's; "
                    "every other weight stays bit-identical), the reset ones and then, when "
                    "those passes leave retained accuracy outside the budget, every weight "
                    "('reset-then-all', Lethe's), or every weight from the start ('all', which "
                    "also lets the model use the capacity a forgotten class freed, as "
                    "retraining does).",
    )
    finetune_lr: float = Field(
        0.03, gt=0, le=10, description="SGD learning rate of fine-tuning the reset weights.")
    widened_lr: float | None = Field(
        None, gt=0, le=10,
        description="Learning rate once fine-tuning trains every weight (with the recipe's "
                    "optimizer); default a fifth of the training recipe's, the fine-tune "
                    "baseline's (0.03 on every weight diverged on the zoo's All-CNN).")
    finetune_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of fine-tuning.")
    batch_size: int = Field(128, ge=1, le=8192, description="Fine-tuning batch size.")
    eval_samples: int = Field(
        500, ge=10, le=100_000,
        description="Forget, retain and test rows sampled for the checks between passes.",
    )


# --- Fisher diagonal and weight selection --------------------------------------------------

def fisher_diagonal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device,
    chunk: int = 32,
    progress: ProgressFn = no_progress,
) -> dict[str, torch.Tensor]:
    """Per parameter, the mean over samples of (∂ log p(y|x) / ∂θ)², from exact per-sample
    gradients (vmap) with the model in eval mode (no dropout, BN running statistics).

    Inputs that are not one tensor (a text model's :class:`TokenBatch`, whose attention
    masks transformers inspects in ways vmap cannot batch) take one backward pass per sample
    instead: the same per-sample gradients, row by row."""
    if isinstance(x, TokenBatch):
        return _fisher_by_rows(model, x, y, device=device, progress=progress)
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def log_likelihood(weights, sample, label):
        logits = functional_call(model, (weights, buffers), (sample.unsqueeze(0),))
        return logits.log_softmax(-1)[0].gather(0, label.unsqueeze(0)).squeeze(0)

    per_sample_gradients = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    totals = {name: torch.zeros_like(p) for name, p in params.items()}
    chunks = max(1, -(-len(x) // chunk))
    with evaluating(model):
        for done, (xb, yb) in enumerate(iterate_batches(x, y, chunk, shuffle=False), 1):
            gradients = per_sample_gradients(params, xb.to(device), yb.to(device))
            for name, g in gradients.items():
                totals[name] += g.pow(2).sum(0)
            progress(done / chunks)
    return {name: total / max(1, len(x)) for name, total in totals.items()}


def _fisher_by_rows(model: nn.Module, x: TokenBatch, y: torch.Tensor, *, device: torch.device,
                    progress: ProgressFn = no_progress) -> dict[str, torch.Tensor]:
    """:func:`fisher_diagonal` one sample at a time (each row's padding trimmed off)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    totals = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    with evaluating(model):
        for row in range(len(x)):
            logits = model(x[row:row + 1].to(device))
            log_likelihood = logits.log_softmax(-1)[0, int(y[row])]
            gradients = torch.autograd.grad(log_likelihood, [p for _, p in named],
                                            allow_unused=True)
            for (name, _), g in zip(named, gradients, strict=True):
                if g is not None:
                    totals[name] += g.pow(2)
            if row % 16 == 15 or row == len(x) - 1:
                progress((row + 1) / len(x))
    return {name: total / max(1, len(x)) for name, total in totals.items()}


@torch.no_grad()
def sample_predicted_labels(model: nn.Module, x: torch.Tensor, device: torch.device,
                            generator: torch.Generator) -> torch.Tensor:
    """One label per row drawn from the model's predictive distribution."""
    with evaluating(model):
        probabilities = torch.cat([model(xb.to(device)).softmax(1).cpu()
                                   for xb, _ in iterate_batches(x, x, 1024, shuffle=False)])
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


def fisher_ratio(forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor],
                 relative_epsilon: float) -> dict[str, torch.Tensor]:
    """F_f / (F_r + ε) with ε = relative_epsilon × the mean of F_r over the same parameter
    tensor, so the guard scales with each layer's Fisher magnitudes. (One ε for the whole
    model let the layers whose Fisher dwarfs the mean, a CNN's first convolutions, fill the
    top ratios whatever D_f was: resetting them for scattered samples left a model at
    chance.)"""
    return {name: forget[name] / (retain[name] + relative_epsilon * retain[name].mean())
            for name in forget}


def select_weights(ratios: dict[str, torch.Tensor], params: Params,
                   widening: int = 0) -> dict[str, torch.Tensor]:
    """Boolean masks of the weights to reset. A zero ratio (D_f never moves the weight) is
    never selected, even when the requested fraction would reach it. Each ``widening`` doubles
    the top fraction (halves the ratio threshold)."""
    eligible = {name: ratio for name, ratio in ratios.items()
                if params.reset_scope == "all" or ratio.dim() > 1}
    masks = {name: torch.zeros_like(ratio, dtype=torch.bool) for name, ratio in ratios.items()}
    return masks | _select(eligible, params, 2**widening)


def _select(ratios: dict[str, torch.Tensor], params: Params,
            widen: float) -> dict[str, torch.Tensor]:
    if not ratios:
        return {}
    flat = torch.cat([r.flatten() for r in ratios.values()])
    if params.selection == "threshold":
        cutoff_mask = flat > params.ratio_threshold / widen
    else:
        fraction = min(1.0, params.top_fraction * widen)
        count = min(math.ceil(fraction * flat.numel()), int((flat > 0).sum()))
        cutoff_mask = torch.zeros_like(flat, dtype=torch.bool)
        cutoff_mask[flat.topk(count).indices] = True
    masks, start = {}, 0
    for name, ratio in ratios.items():
        masks[name] = cutoff_mask[start:start + ratio.numel()].view_as(ratio)
        start += ratio.numel()
    return masks


# --- The method ----------------------------------------------------------------------------

@register_method
class DeepClean(UnlearningMethod):
    name = "deepclean"
    summary = (
        "Zero the weights whose diagonal Fisher information on the forget set dwarfs that on "
        "the retain set, then fine-tune only those weights on the retain set."
    )
    reference = (
        "Shi, Ghalyan, Gourgoulias, Buford, Moran. DeepClean: Machine Unlearning on the Cheap "
        "by Resetting Privacy Sensitive Weights using the Fisher Diagonal. arXiv:2311.10448, 2024."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        model = working_copy(task)
        generator = seeded_generator(params.seed)
        monitor = Monitor(task, samples=params.eval_samples, generator=generator,
                          read_retain=True)
        monitor.begin(model)
        ratios = self._fisher_ratios(model, task, params, generator)
        # Fine-tuning every weight also moves the normalisation statistics.
        weights = Weights([*model.parameters(), *_norm_statistics(model)])
        base = weights.save()
        attempts: list[dict] = []
        best: tuple[float, int, list[torch.Tensor]] | None = None
        span = 0.5 / params.max_resets
        for attempt in range(params.max_resets):
            if attempt:
                weights.load(base)
            masks = select_weights(ratios, params, widening=attempt)
            reset_weights(model, masks)
            after_reset = monitor.score(model, 0)
            tuned, after_finetune = finetune_masked(
                model, masks, task, params, generator, monitor,
                progress_span(task.progress, 0.5 + attempt * span, 0.5 + (attempt + 1) * span))
            attempts.append(_attempt_record(masks, after_reset, after_finetune, tuned))
            # Closest to the gate's asks, an attempt that keeps utility before any that not.
            rank = (not monitor.utility_kept(after_finetune),
                    _shortfall(monitor, after_finetune))
            if best is not None and rank >= best[0]:
                break  # a wider reset did no better: D_f is not held in a few weights
            best = (rank, attempt, weights.save())
            # A wider reset only helps a forget set that is still known, and only while
            # fine-tuning wins utility back: a wider one would lose more of what D_r needs.
            costly, shortfall = rank
            if (shortfall == 0 or costly or params.finetune_epochs == 0
                    or not monitor.remembered(after_finetune)):
                break
        _, kept, saved = best
        weights.load(saved)
        task.progress(1.0)
        last = attempts[kept]
        metrics = {key: last[key] for key in ("weights_reset", "weights_total", "reset_fraction",
                                              "reset_per_parameter", "after_reset",
                                              "after_finetune", "finetune_stop_reason")}
        metrics |= {"attempts": len(attempts), "kept_attempt": kept,
                    "attempt_history": [{k: a[k] for k in ("reset_fraction", "after_reset",
                                                           "after_finetune")}
                                        for a in attempts],
                    "finetune_history": last["history"]}
        return UnlearningOutcome(model=model.eval(), metrics=metrics)

    def _fisher_ratios(self, model: nn.Module, task: UnlearningTask, params: Params,
                       generator: torch.Generator) -> dict[str, torch.Tensor]:
        data = task.data
        forget_rows = data.forget_idx[
            random_rows(len(data.forget_idx), params.fisher_forget_samples, generator)]
        retain_rows = data.retain_idx[
            random_rows(len(data.retain_idx), params.fisher_retain_samples, generator)]
        fishers = []
        for rows, span in ((forget_rows, (0.0, 0.25)), (retain_rows, (0.25, 0.5))):
            x = data.x_train[rows]
            y = (data.y_train[rows] if params.fisher_labels == "true"
                 else sample_predicted_labels(model, x, task.device, generator))
            fishers.append(fisher_diagonal(model, x, y, device=task.device,
                                           chunk=params.fisher_chunk,
                                           progress=progress_span(task.progress, *span)))
        return fisher_ratio(*fishers, params.epsilon)


def _norm_statistics(model: nn.Module) -> list[torch.Tensor]:
    """The model's floating-point buffers (normalisation statistics), which a pass that does
    not freeze them changes along with the weights."""
    return [b for b in model.buffers() if b.is_floating_point()]


@torch.no_grad()
def reset_weights(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for name, parameter in model.named_parameters():
        parameter.masked_fill_(masks[name], 0.0)


def _shortfall(monitor: Monitor, score: Score) -> float:
    """Points by which ``score`` misses what the gate will ask (0: nothing missed)."""
    miss = max(0.0, monitor.utility_drop(score) - monitor.budget)
    if monitor.class_forgetting:
        return miss + max(0.0, score.forget - monitor.class_target)
    low, high = monitor.gate_bounds(score)
    return miss + max(0.0, score.forget - high) + max(0.0, low - score.forget)


def _attempt_record(masks: dict[str, torch.Tensor], after_reset: Score,
                    after_finetune: Score, tuned: Run) -> dict:
    reset = {name: int(mask.sum()) for name, mask in masks.items()}
    total = sum(mask.numel() for mask in masks.values())
    return {
        "weights_reset": sum(reset.values()),
        "weights_total": total,
        "reset_fraction": sum(reset.values()) / total,
        "reset_per_parameter": {name: count for name, count in reset.items() if count},
        "after_reset": after_reset.as_dict(),
        "after_finetune": after_finetune.as_dict(),
        "finetune_stop_reason": tuned.stop_reason,
        "history": tuned.history,
    }


def finetune_masked(model: nn.Module, masks: dict[str, torch.Tensor], task: UnlearningTask,
                    params: Params, generator: torch.Generator, monitor: Monitor,
                    progress: ProgressFn) -> tuple[Run, Score]:
    """Fine-tuning after the reset, as ``finetune_scope`` says: the reset weights, then (for
    'reset-then-all', when those passes did not bring retained accuracy back within the
    monitor's budget) every weight, each phase up to finetune_epochs passes. Returns the run
    and the monitor's score of the model it leaves."""
    if params.finetune_epochs == 0 or not any(mask.any() for mask in masks.values()):
        return Run("no-finetuning", params.finetune_lr), monitor.score(model, 0)
    if params.finetune_scope == "all":
        run = _finetune(model, None, task, params, generator, monitor, progress)
        return run, monitor.score(model, run.rounds)
    masked = _finetune(model, masks, task, params, generator, monitor,
                       progress_span(progress, 0.0, 0.5))
    score = monitor.score(model, masked.rounds)
    if params.finetune_scope == "reset" or not _needs_every_weight(monitor, score, masked):
        progress(1.0)
        return masked, score
    widened = _finetune(model, None, task, params, generator, monitor,
                        progress_span(progress, 0.5, 1.0))
    run = Run(f"{masked.stop_reason}; every weight: {widened.stop_reason}", widened.lr,
              rounds=masked.rounds + widened.rounds, kept=masked.kept + widened.kept,
              undone=masked.undone + widened.undone,
              history=masked.history + [entry | {"scope": "all"} for entry in widened.history])
    return run, monitor.score(model, run.rounds)


def _needs_every_weight(monitor: Monitor, score: Score, masked: Run) -> bool:
    """Fine-tuning the reset weights (``masked``, leaving the model at ``score``) left retained
    accuracy outside the budget with the forget set forgotten. Not when the forget set is
    still known (a memorising model whose reset missed it: training every weight on D_r would
    only cost the time of a retrain, and the next, wider reset is the remedy) or was coming
    back."""
    if masked.stop_reason.startswith("forget-set-returns"):
        return False
    return monitor.utility_drop(score) > monitor.budget / 2 and not monitor.remembered(score)


def _finetune(model: nn.Module, masks: dict[str, torch.Tensor] | None, task: UnlearningTask,
              params: Params, generator: torch.Generator, monitor: Monitor,
              progress: ProgressFn) -> Run:
    """Cross-entropy on D_r updating only the masked entries, pass by pass until the monitor
    finds retained accuracy recovered. Gradients outside the mask are zeroed and there is no
    weight decay, so SGD's momentum buffers stay zero there and those weights do not change by
    a single bit.

    Without ``masks`` every weight trains, as the fine-tune baseline does: the recipe's
    optimizer (SGD with finetune_momentum for an SGD recipe; Adam or AdamW, without weight
    decay, for those) at widened_lr, normalisation statistics updated."""
    widened = masks is None
    named = dict(model.named_parameters())
    trainable = named if widened else {name: named[name] for name, mask in masks.items()
                                       if mask.any()}

    lr = ((params.widened_lr or task.recipe.lr / DEFAULT_LR_DIVISOR) if widened
          else params.finetune_lr)
    adaptive = widened and task.recipe.optimizer != "sgd"

    def new_optimizer() -> torch.optim.Optimizer:
        if adaptive:  # SGD at a fifth of an Adam recipe's rate would not move the weights
            return make_optimizer(trainable.values(),
                                  task.recipe.model_copy(update={"weight_decay": 0.0}), lr)
        return torch.optim.SGD(trainable.values(), lr=lr,
                               momentum=params.finetune_momentum, weight_decay=0.0)

    optimizer = new_optimizer()
    data = task.data
    take = max(1, math.ceil(params.finetune_fraction * len(data.retain_idx)))

    def finetune_pass(_number: int, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = data.retain_idx[random_rows(len(data.retain_idx), take, generator)]
        model.train()
        if not widened:
            freeze_norm_statistics(model)
        for xb, yb in iterate_batches(data.x_train[rows], data.y_train[rows], params.batch_size,
                                      shuffle=True, generator=generator, device=task.device):
            if task.recipe.augment:  # as the model was trained: without, passes overfit D_r
                xb = augment_images(xb, generator)
            optimizer.zero_grad(set_to_none=True)
            # bf16 forward pass on a GPU (the Fisher diagonals above stay float32: exact
            # per-sample gradients decide which weights are reset).
            with autocast_for(task.device):
                logits = model(xb.to(task.device))
                loss = nn.functional.cross_entropy(logits, yb.to(task.device))
            loss.backward()
            if not widened:
                for name, parameter in trainable.items():
                    parameter.grad.mul_(masks[name])
            optimizer.step()

    def restart() -> None:
        nonlocal optimizer
        optimizer = new_optimizer()

    with only_these_trainable(model, list(trainable.values())):
        changed = [*trainable.values(), *(_norm_statistics(model) if widened else [])]
        return repair(monitor, model, Weights(changed), finetune_pass,
                      lr=lr, max_rounds=params.finetune_epochs, min_rounds=1,
                      on_undo=restart, progress=progress)
