"""Helpers the baseline methods share: data views, batch pairing, step progress, distillation,
random relabelling, a cross-entropy loop with hooks, and global top-fraction weight masks."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.device import autocast_for
from worker.engine.methods._base import ProgressFn, UnlearningData
from worker.engine.methods._common import random_rows
from worker.engine.training import iterate_batches

Batch = tuple[torch.Tensor, torch.Tensor]
Masks = dict[str, torch.Tensor]


# --- Data ------------------------------------------------------------------------------------

def forget_set(data: UnlearningData) -> Batch:
    return data.x_train[data.forget_idx], data.y_train[data.forget_idx]


def retain_set(data: UnlearningData) -> Batch:
    return data.x_train[data.retain_idx], data.y_train[data.retain_idx]


def retain_sample(data: UnlearningData, fraction: float, generator: torch.Generator) -> Batch:
    """A random ``fraction`` of D_r (at least one row)."""
    take = max(1, math.ceil(fraction * len(data.retain_idx)))
    rows = data.retain_idx[random_rows(len(data.retain_idx), take, generator)]
    return data.x_train[rows], data.y_train[rows]


def require_rows(data: UnlearningData, *, retain: bool = False) -> None:
    if len(data.forget_idx) == 0:
        raise ValueError("the forget set is empty: there is nothing to unlearn")
    if retain and len(data.retain_idx) == 0:
        raise ValueError("the retain set is empty: this method needs retained data")


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator,
                        excluded: Iterable[int] = ()) -> torch.Tensor:
    """Per label, a class drawn uniformly from those that are neither it nor ``excluded`` (the
    forgotten classes, so a forgotten sample is never relabelled as another forgotten class).
    A row with no such class falls back to any class other than its own."""
    rows = torch.arange(len(labels))
    allowed = torch.ones(len(labels), num_classes, dtype=torch.bool)
    allowed[:, list(excluded)] = False
    allowed[rows, labels] = False
    stranded = ~allowed.any(1)
    allowed[stranded] = True
    allowed[rows[stranded], labels[stranded]] = False
    return torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)


def relabelled_union(data: UnlearningData, generator: torch.Generator) -> Batch:
    """D_r with its labels plus D_f with random wrong labels, drawn once (as the authors of
    SalUn do), for cross-entropy training that overwrites what the model knew about D_f."""
    x_forget, y_forget = forget_set(data)
    x_retain, y_retain = retain_set(data)
    wrong = random_wrong_labels(y_forget, data.num_classes, generator, data.forget_classes or ())
    return torch.cat([x_retain, x_forget]), torch.cat([y_retain, wrong])


# --- Batches and progress --------------------------------------------------------------------

def steps_per_epoch(rows: int, batch_size: int) -> int:
    return max(1, math.ceil(rows / batch_size))


def cycled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   generator: torch.Generator,
                   device: torch.device | None = None) -> Iterator[Batch]:
    """Shuffled mini-batches without end, reshuffled on every pass (sliced on a GPU
    ``device``, see ``iterate_batches``)."""
    if len(x) == 0:
        raise ValueError("cannot cycle over an empty set")
    while True:
        yield from iterate_batches(x, y, batch_size, shuffle=True, generator=generator,
                                   device=device)


def paired_batches(lead: Batch, partner: Batch, batch_size: int, generator: torch.Generator,
                   partner_batch_size: int | None = None,
                   device: torch.device | None = None) -> Iterator[tuple[Batch, Batch]]:
    """One shuffled pass over ``lead``, each batch paired with the next batch of ``partner``,
    which is cycled so that it never runs out (D_f is usually much smaller than D_r)."""
    partners = cycled_batches(*partner, partner_batch_size or batch_size, generator, device)
    for batch in iterate_batches(*lead, batch_size, shuffle=True, generator=generator,
                                 device=device):
        yield batch, next(partners)


class StepProgress:
    """Reports the share of optimisation steps done after each one. The callback throttles its
    own writes, and calling it often lets a cancellation (JobCancelled) land quickly."""

    def __init__(self, progress: ProgressFn, total_steps: int):
        self.progress, self.total, self.done = progress, max(1, total_steps), 0

    def advance(self) -> None:
        self.done += 1
        self.progress(min(1.0, self.done / self.total))


# --- Models and losses -----------------------------------------------------------------------

def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy that never trains, in eval mode: the teachers of the distillation baselines."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) between temperature-softened outputs, averaged over the batch and
    scaled by T² so that gradient magnitudes do not shrink with the temperature (Hinton et al.)."""
    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


def l1_norm(model: nn.Module) -> torch.Tensor:
    return sum(p.abs().sum() for p in model.parameters())


def train_cross_entropy(
    model: nn.Module,
    data: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    progress: ProgressFn,
    penalty: Callable[[int], torch.Tensor] | None = None,
    adjust_gradients: Callable[[], None] | None = None,
) -> list[float]:
    """Cross-entropy training in place; returns each epoch's mean loss. ``penalty(epoch)`` is
    added to every step's loss; ``adjust_gradients`` runs between backward and step.

    On a GPU the data is sliced on the device, the forward pass runs under bf16 autocast
    (the loss itself in float32) and the epoch's loss is summed on the device, so no step
    waits for the GPU; the float64 sum is the one the CPU's Python floats add up to."""
    x, y = data
    steps = StepProgress(progress, epochs * steps_per_epoch(len(x), batch_size))
    epoch_losses = []
    for epoch in range(epochs):
        model.train()
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for xb, yb in iterate_batches(x, y, batch_size, shuffle=True, generator=generator,
                                      device=device):
            with autocast_for(device):
                loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            total, count = total + loss.detach().double() * len(xb), count + len(xb)
            if penalty is not None:
                loss = loss + penalty(epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if adjust_gradients is not None:
                adjust_gradients()
            optimizer.step()
            steps.advance()
        epoch_losses.append(total.item() / max(1, count))
    return epoch_losses


# --- Weight masks ----------------------------------------------------------------------------

def top_fraction_masks(scores: dict[str, torch.Tensor], fraction: float) -> Masks:
    """Boolean masks selecting the ``fraction`` of entries with the highest score, ranked over
    all tensors together (one global threshold, as SalUn ranks its saliency)."""
    flat = torch.cat([score.flatten() for score in scores.values()])
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[flat.topk(round(fraction * flat.numel())).indices] = True
    return split_like(chosen, scores)


def split_like(flat: torch.Tensor, shapes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut a flat tensor back into pieces shaped like ``shapes``' values, in their order."""
    pieces, start = {}, 0
    for name, reference in shapes.items():
        pieces[name] = flat[start:start + reference.numel()].view_as(reference)
        start += reference.numel()
    return pieces


def count_selected(masks: Masks) -> dict[str, int]:
    """Selected entries per tensor, leaving out tensors with none."""
    counts = {name: int(mask.sum()) for name, mask in masks.items()}
    return {name: count for name, count in counts.items() if count}
