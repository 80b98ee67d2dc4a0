"""SalUn: find the weights most salient to forgetting (largest |∇θ| of the forget loss), then run
random-label unlearning that updates only those weights; every other weight stays bit-identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from worker.engine.methods._base import (
    MethodParams,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.methods._baseline_utils import (
    Batch,
    Masks,
    count_selected,
    forget_set,
    relabelled_union,
    require_rows,
    top_fraction_masks,
    train_cross_entropy,
)
from worker.engine.methods._common import progress_span, working_copy
from worker.engine.training import iterate_batches, seeded_generator

SALIENCY_SHARE = 0.1  # of the progress bar


class Params(MethodParams):
    mask_fraction: float = Field(
        0.5, gt=0, le=1,
        description="Share of all weights, the most salient, that unlearning may update.",
    )
    epochs: int = Field(2, ge=1, le=100, description="Passes over D_r ∪ D_f (relabelled).")
    lr: float = Field(0.005, gt=0, le=10, description="SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(
        5e-4, ge=0, le=1, description="Weight decay, applied to the masked weights only.")
    batch_size: int = Field(64, ge=1, le=8192, description="Rows per step, D_r and D_f mixed.")


@register_method
class SalUn(UnlearningMethod):
    name = "salun"
    summary = (
        "Saliency unlearning: random-label training on the forget set (with the retain set) "
        "restricted to the weights with the largest forget-loss gradient magnitude."
    )
    reference = (
        "Fan, Liu, Zhang, Wong, Wei, Liu. SalUn: Empowering Machine Unlearning via Gradient-based "
        "Weight Saliency in Both Image Classification and Generation. ICLR 2024. "
        "arXiv:2310.12508."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        require_rows(task.data)
        model = working_copy(task)
        generator = seeded_generator(params.seed)
        saliency = forget_loss_saliency(model, forget_set(task.data), params.batch_size,
                                        task.device)
        task.progress(SALIENCY_SHARE)
        masks = top_fraction_masks(saliency, params.mask_fraction)
        # No optimizer weight decay: it would move unmasked weights; the hook applies it.
        optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum)
        losses = train_cross_entropy(
            model, relabelled_union(task.data, generator), optimizer, epochs=params.epochs,
            batch_size=params.batch_size, generator=generator, device=task.device,
            progress=progress_span(task.progress, SALIENCY_SHARE, 1.0),
            adjust_gradients=lambda: restrict_to_masks(model, masks, params.weight_decay))
        selected = count_selected(masks)
        metrics = {"weights_masked": sum(selected.values()),
                   "weights_total": sum(mask.numel() for mask in masks.values()),
                   "masked_per_parameter": selected, "epoch_losses": losses}
        return UnlearningOutcome(model=model.eval(), metrics=metrics)


def forget_loss_saliency(model: nn.Module, forget: Batch, batch_size: int,
                         device: torch.device) -> dict[str, torch.Tensor]:
    """|∇θ CE(D_f)| per weight, the gradient of the mean loss over all of D_f (accumulated
    batch by batch), with the model in eval mode. In float32 on a GPU too (no autocast):
    these magnitudes rank the weights, and bf16 would reorder those near the threshold."""
    model.eval()
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for xb, yb in iterate_batches(*forget, batch_size, shuffle=False, device=device):
        loss = F.cross_entropy(model(xb.to(device)), yb.to(device), reduction="sum")
        gradients = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, gradient in zip(params, gradients, strict=True):
            if gradient is not None:
                total[name] += gradient
    return {name: (gradient / len(forget[0])).abs() for name, gradient in total.items()}


@torch.no_grad()
def restrict_to_masks(model: nn.Module, masks: Masks, weight_decay: float) -> None:
    """Add weight decay to the gradients, then zero them outside the masks. SGD then never
    touches an unmasked weight: its gradient and momentum stay exactly zero."""
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            continue
        if weight_decay:
            parameter.grad.add_(parameter, alpha=weight_decay)
        parameter.grad.mul_(masks[name])
