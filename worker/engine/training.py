"""Supervised training: the recipe a model was trained with, and the loop that applies it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from worker.engine.architectures import ARCHITECTURES, Classifier
from worker.engine.data.device_batches import DeviceBatches, device_batches, fits_on
from worker.engine.data.formats import load_dataset_file
from worker.engine.device import (
    autocast_for,
    channels_last,
    maybe_compiled,
    on_gpu,
    pick_device,
)
from worker.engine.metrics import accuracy


class TrainingRecipe(BaseModel):
    """How a model was trained; ``retrain`` and fine-tuning methods reuse it."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=8192)
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="adamw (decoupled weight decay) is the usual one for transformers.")
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    schedule: Literal["cosine", "constant", "linear"] = Field(
        "cosine", description="cosine to 0, constant, or linear to 0 (transformers' default).")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of the steps over which the rate rises linearly "
                                     "from 0 first (transformers' recipes: 0.1).")
    augment: bool = Field(False, description="Random crop (pad 4) and horizontal flip of images.")
    seed: int = Field(0, ge=0)


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generators (initialisation, dropout) for the block, then restore
    them, so one job's seed does not leak into whatever runs next in the process."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of in-memory tensors (much faster than a DataLoader for small inputs).
    ``drop_last`` leaves out a final, smaller batch when a full one came before it.

    With a GPU ``device`` the tensors are moved there once and the batches are sliced there
    (:mod:`worker.engine.data.device_batches`): the same rows in the same order, drawn from
    the same generator. Without one, or with a CPU, the batches stay where ``x`` is."""
    if on_gpu(device) and fits_on(device, x, y):
        yield from device_batches(x, y, batch_size, shuffle=shuffle, generator=generator,
                                  drop_last=drop_last, device=device)
        return
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    end = n - n % batch_size if drop_last and n > batch_size else n
    for start in range(0, end, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def augment_images(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, the usual CIFAR augmentation."""
    if x.dim() != 4:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect" if min(h, w) > 4 else "constant")
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    out = out.permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    out[flip] = out[flip].flip(-1)
    return out


def make_optimizer(params, recipe: TrainingRecipe,
                   lr: float | None = None) -> torch.optim.Optimizer:
    lr = recipe.lr if lr is None else lr
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainingRecipe, total_steps: int):
    warmup = round(recipe.warmup_ratio * total_steps)
    if recipe.schedule == "cosine" and not warmup:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if recipe.schedule == "constant" and not warmup:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmed_factor(step, warmup, total_steps, recipe.schedule))


def _warmed_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then the schedule over the rest."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    done = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - done)
    return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: TrainingRecipe,
    device: torch.device,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``(x, y)`` with cross-entropy under ``recipe``."""
    epochs = recipe.epochs if epochs is None else epochs
    generator = seeded_generator(recipe.seed)
    model.to(device).train()
    optimizer = make_optimizer(model.parameters(), recipe, lr)
    # A ragged last batch (8 rows after 14 of 128) trains BatchNorm on noise and leaves it in
    # the running statistics: a ResNet fit 1,800 rows to 92% with it and 99.9% without.
    drop_last = has_batch_norm(model) and len(x) > recipe.batch_size
    steps_per_epoch = (len(x) // recipe.batch_size if drop_last
                       else max(1, -(-len(x) // recipe.batch_size)))
    scheduler = make_scheduler(optimizer, recipe, epochs * steps_per_epoch)
    epoch_batches = _epoch_batches(x, y, recipe, device, generator, drop_last)
    # On a GPU: channels-last weights (the batches come channels-last), bf16 autocast for the
    # forward pass and the loss (parameters, gradients and SGD state stay float32), and the
    # compiled model when the bench preset asks for it. On a CPU all three are no-ops.
    images = on_gpu(device) and x.dim() == 4
    with channels_last(model, enabled=images):
        net = maybe_compiled(model, device)
        for epoch in range(epochs):
            for xb, yb in epoch_batches():
                optimizer.zero_grad(set_to_none=True)
                with autocast_for(device):
                    loss = F.cross_entropy(net(xb), yb)
                loss.backward()
                optimizer.step()
                scheduler.step()
            if progress is not None:
                progress((epoch + 1) / epochs)
    return model.eval()


def _epoch_batches(x: torch.Tensor, y: torch.Tensor, recipe: TrainingRecipe,
                   device: torch.device, generator: torch.Generator, drop_last: bool
                   ) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """Each call, one shuffled (and, per the recipe, augmented) pass over ``(x, y)`` on
    ``device``. On a GPU the data is moved there once for all passes and augmented there;
    on a CPU (or when it would not fit) batches are sliced on the host and copied, as they
    always were. Both draw the same permutations and crops from ``generator``."""
    if on_gpu(device) and fits_on(device, x, y):
        resident = DeviceBatches(x, y, device)
        return lambda: resident.epoch(recipe.batch_size, shuffle=True, generator=generator,
                                      drop_last=drop_last, augment=recipe.augment)

    def host_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in iterate_batches(x, y, recipe.batch_size, shuffle=True,
                                      generator=generator, drop_last=drop_last):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if recipe.augment:
                xb = augment_images(xb, generator)
            yield xb, yb

    return host_batches


def save_state_dict(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the weights as safetensors (which wants contiguous CPU tensors)."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def _epoch_bar(epochs: int, enabled: bool) -> tuple[tqdm, Callable[[float], None]]:
    bar = tqdm(total=epochs, desc="training", unit="epoch", disable=not enabled)

    def advance(fraction: float) -> None:
        bar.update(round(fraction * epochs) - bar.n)

    return bar, advance


def train_from_file(
    dataset_path: Path,
    architecture: str,
    architecture_config: dict[str, Any] | None = None,
    *,
    out_path: Path,
    epochs: int | None = None,
    seed: int = 0,
    recipe: dict[str, Any] | None = None,
    device: torch.device | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train a catalogue architecture on a dataset file of any upload format (``lethe train``).

    ``num_classes`` and ``input_shape`` default to the dataset's; ``recipe`` overrides fields of
    :class:`TrainingRecipe`, ``epochs`` and ``seed`` override those. Writes the state dict to
    ``out_path`` and returns a summary, including the full configs to upload the model with.
    """
    started = time.perf_counter()
    dataset_path = Path(dataset_path)
    data = load_dataset_file(dataset_path, dataset_path.name)
    entry = ARCHITECTURES.get(architecture)
    config = entry.config_model.model_validate(
        {"num_classes": data.num_classes, "input_shape": data.input_shape,
         **(architecture_config or {})})
    overrides = {"seed": seed} | ({"epochs": epochs} if epochs is not None else {})
    training_config = TrainingRecipe.model_validate({**(recipe or {}), **overrides})
    device = device or pick_device()
    x_train, y_train = data.inputs(data.x_train), torch.from_numpy(data.y_train)
    x_test, y_test = data.inputs(data.x_test), torch.from_numpy(data.y_test)
    with seeded(seed):
        model: Classifier = entry.build(config)
        bar, advance = _epoch_bar(training_config.epochs, show_progress)
        with bar:
            train(model, x_train, y_train, training_config, device, progress=advance)
    summary = {
        "out_path": str(out_path),
        "architecture": architecture,
        "architecture_config": config.model_dump(mode="json"),
        "training_config": training_config.model_dump(mode="json"),
        "num_train": len(y_train),
        "num_test": len(y_test),
        "train_accuracy": accuracy(model, x_train, y_train, device),
        "test_accuracy": accuracy(model, x_test, y_test, device),
    }
    save_state_dict(model, Path(out_path), metadata={
        key: json.dumps(summary[key])
        for key in ("architecture", "architecture_config", "training_config")})
    summary["duration_s"] = round(time.perf_counter() - started, 3)
    return summary
