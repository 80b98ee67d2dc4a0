"""Selective Synaptic Dampening: no training at all. Weights far more important to D_f than to
the whole training set D (diagonal Fisher information) are shrunk in proportion; every other
weight stays bit-identical.

Importance follows the authors' estimator: the squared gradient of the *mini-batch* mean
cross-entropy, averaged over batches. A per-sample Fisher would select nothing in a typical
class request: D ⊃ D_f gives F_D ≥ (|D_f|/|D|)·F_f, so F_f > α·F_D is impossible once
|D_f|/|D| ≥ 1/α (one class of ten at α = 10). Shuffled batches of D mix classes whose mean
gradients partly cancel at a trained optimum, while those of a forgotten class add up, which is
what makes the contrast work. (The authors' class-forgetting loader runs D in class-sorted
order, where the same bound would bite for a class that is a tenth of D; we always shuffle.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from worker.engine.methods._base import (
    MethodParams,
    ProgressFn,
    UnlearningData,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.methods._baseline_utils import count_selected, require_rows
from worker.engine.methods._common import progress_span, working_copy
from worker.engine.training import seeded_generator


class Params(MethodParams):
    alpha: float = Field(
        100.0, gt=0, le=1e6,
        description="α, selection: dampen weights whose importance on D_f exceeds α times "
                    "their importance on D (the paper: 10, which wrecked a small CNN on class "
                    "forgetting in Lethe's sweep).",
    )
    dampening: float = Field(
        1.0, gt=0, le=1e6,
        description="λ, dampening: a selected weight is multiplied by min(λ·F_D/F_f, 1).",
    )
    batch_size: int = Field(
        64, ge=1, le=8192,
        description="Rows per gradient of the importance estimate (the authors use 64; it "
                    "changes the scale of both importances, hence which weights α selects).",
    )


@register_method
class SelectiveSynapticDampening(UnlearningMethod):
    name = "ssd"
    summary = (
        "Dampen the weights whose diagonal Fisher importance on the forget set exceeds α times "
        "that on the full training set, by min(λ·F_D/F_f, 1); no fine-tuning."
    )
    reference = (
        "Foster, Schoepf, Brintrup. Fast Machine Unlearning Without Retraining Through Selective "
        "Synaptic Dampening. AAAI 2024. arXiv:2308.07707."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        require_rows(task.data)
        model = working_copy(task).eval()
        generator = seeded_generator(params.seed)
        data = task.data
        forget_importance = importance(model, data, data.forget_idx, params.batch_size,
                                       task.device, generator,
                                       progress_span(task.progress, 0.0, 0.2))
        full_importance = importance(model, data, data.known_idx(), params.batch_size,
                                     task.device, generator,
                                     progress_span(task.progress, 0.2, 1.0))
        selected = dampen(model, forget_importance, full_importance, params)
        total = sum(mask.numel() for mask in selected.values())
        dampened = count_selected(selected)
        metrics = {"weights_dampened": sum(dampened.values()), "weights_total": total,
                   "dampened_fraction": sum(dampened.values()) / total,
                   "dampened_per_parameter": dampened}
        return UnlearningOutcome(model=model, metrics=metrics)


def importance(model: nn.Module, data: UnlearningData, rows: torch.Tensor, batch_size: int,
               device: torch.device, generator: torch.Generator,
               progress: ProgressFn) -> dict[str, torch.Tensor]:
    """Per weight, the squared gradient of a mini-batch's mean cross-entropy over training
    ``rows``, averaged over shuffled batches with the model in eval mode."""
    params = dict(model.named_parameters())
    totals = {name: torch.zeros_like(p) for name, p in params.items()}
    batches = balanced_batches(len(rows), batch_size, generator)
    for done, positions in enumerate(batches, 1):
        batch = rows[positions]
        logits = model(data.x_train[batch].to(device))
        loss = F.cross_entropy(logits, data.y_train[batch].to(device))
        gradients = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, gradient in zip(params, gradients, strict=True):
            if gradient is not None:
                totals[name] += gradient.pow(2)
        progress(done / len(batches))
    return {name: total / len(batches) for name, total in totals.items()}


def balanced_batches(rows: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled split into ⌈rows/batch_size⌉ batches whose sizes differ by at most one. The
    authors' loader leaves a short last batch instead; its squared mean gradient carries noise
    ∝ 1/size, which in a small forget set (140 rows: 64, 64, 12) inflates F_f and dampens
    weights at random. On large sets the two agree."""
    count = max(1, -(-rows // batch_size))
    return list(torch.tensor_split(torch.randperm(rows, generator=generator), count))


@torch.no_grad()
def dampen(model: nn.Module, forget_importance: dict[str, torch.Tensor],
           full_importance: dict[str, torch.Tensor], params: Params) -> dict[str, torch.Tensor]:
    """Scale every weight with F_f > α·F_D by min(λ·F_D/F_f, 1); returns the selection."""
    selected = {}
    for name, weight in model.named_parameters():
        forget_f, full_f = forget_importance[name], full_importance[name]
        chosen = forget_f > params.alpha * full_f  # F_f > 0 wherever chosen
        scale = (params.dampening * full_f[chosen] / forget_f[chosen]).clamp(max=1.0)
        weight[chosen] = weight[chosen] * scale
        selected[name] = chosen
    return selected
