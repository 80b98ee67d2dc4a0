"""UNSIR: learn error-maximising noise for the forgotten classes, then impair the model by
training on that noise (labelled with the class it attacks) mixed with a retain sample, and
repair it by training on the retain sample alone.

Random-sample forgetting (no ``forget_classes``), which the paper does not cover: noise is
learned for every class that occurs in D_f, and each class's noise enters the impair set in
proportion to the share of that class's training rows being forgotten (all of them, the paper's
setting, for a forgotten class; about 10% for a 10% random request). The impair step thus
damages each class as much as the request touches it, and the repair step restores the rest;
do not expect it to single out individual rows.

Text (token ids, which no gradient can move): the noise is learned in the model's input
embedding space, one vector per position of the forget set's longest text, and fed as
``inputs_embeds``; in the impair set the retain sample enters as its (fixed) embeddings too,
so one batch can hold both. The repair step trains on the retain sample's token ids.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from worker.engine.inputs import TokenBatch
from worker.engine.methods._base import (
    MethodParams,
    UnlearningData,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.methods._baseline_utils import Batch, require_rows, train_cross_entropy
from worker.engine.methods._common import (
    only_these_trainable,
    progress_span,
    working_copy,
)
from worker.engine.training import seeded_generator

NOISE_SHARE = 0.2  # of the progress bar


class Params(MethodParams):
    noise_rows: int = Field(
        32, ge=1, le=4096, description="Distinct noise inputs learned per forgotten class.")
    noise_steps: int = Field(25, ge=1, le=10_000, description="Adam steps learning the noise.")
    noise_lr: float = Field(0.1, gt=0, le=10, description="Adam learning rate of the noise.")
    noise_l2: float = Field(
        0.1, ge=0, le=100,
        description="λ in −CE(noise, class) + λ·mean‖noise‖², which keeps the noise bounded.",
    )
    noise_copies: int = Field(
        80, ge=1, le=10_000,
        description="Copies of a fully forgotten class's noise in the impair set (scaled down "
                    "by the share of the class forgotten in random-sample requests).",
    )
    retain_per_class: int = Field(
        500, ge=1, le=1_000_000, description="D_r rows sampled per class for impair and repair.")
    impair_epochs: int = Field(1, ge=1, le=100, description="Passes over noise ∪ retain sample.")
    impair_lr: float = Field(0.001, gt=0, le=10, description="Adam learning rate of impairing.")
    repair_epochs: int = Field(1, ge=0, le=100, description="Passes over the retain sample.")
    repair_lr: float = Field(0.001, gt=0, le=10, description="Adam learning rate of repairing.")
    batch_size: int = Field(64, ge=1, le=8192, description="Rows per step of impair and repair.")


@register_method
class Unsir(UnlearningMethod):
    name = "unsir"
    summary = (
        "Learn error-maximising noise for the forgotten classes, impair the model with it "
        "alongside a retain sample, then repair on the retain sample."
    )
    reference = (
        "Tarun, Chundawat, Mandal, Kankanhalli. Fast Yet Effective Machine Unlearning. IEEE "
        "Transactions on Neural Networks and Learning Systems (TNNLS), 2023. arXiv:2111.08947."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        require_rows(task.data, retain=True)
        model = working_copy(task)
        generator = seeded_generator(params.seed)
        copies = noise_copies(task.data, params.noise_copies)
        noise, noise_labels = learn_noise(model, copies, task, params, generator)
        retain = sample_per_class(task.data, params.retain_per_class, generator)
        impair_set = with_noise(retain, noise, noise_labels, copies, model)
        # The noise takes NOISE_SHARE of the progress bar; impair and repair share the rest.
        impair_end = NOISE_SHARE + (1 - NOISE_SHARE) * params.impair_epochs / (
            params.impair_epochs + params.repair_epochs)
        impair_losses = self._train(model, impair_set, params.impair_epochs, params.impair_lr,
                                    task, params, generator, (NOISE_SHARE, impair_end))
        repair_losses = self._train(model, retain, params.repair_epochs, params.repair_lr,
                                    task, params, generator, (impair_end, 1.0))
        metrics = {"noise_copies_per_class": {str(c): n for c, n in copies.items()},
                   "noise_rows": len(noise), "impair_rows": len(impair_set[0]),
                   "repair_rows": len(retain[0]), "impair_losses": impair_losses,
                   "repair_losses": repair_losses}
        return UnlearningOutcome(model=model.eval(), metrics=metrics)

    @staticmethod
    def _train(model: nn.Module, data: Batch, epochs: int, lr: float, task: UnlearningTask,
               params: Params, generator: torch.Generator,
               span: tuple[float, float]) -> list[float]:
        if epochs == 0:
            return []
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        return train_cross_entropy(model, data, optimizer, epochs=epochs,
                                   batch_size=params.batch_size, generator=generator,
                                   device=task.device,
                                   progress=progress_span(task.progress, *span))


def noise_copies(data: UnlearningData, full_copies: int) -> dict[int, int]:
    """Per class to attack, how many copies of its noise the impair set holds: ``full_copies``
    times the share of the class's known rows being forgotten (at least one)."""
    forget_labels = data.y_train[data.forget_idx]
    known_labels = data.y_train[data.known_idx()]
    classes = data.forget_classes or sorted(set(forget_labels.tolist()))
    copies = {}
    for label in classes:
        share = int((forget_labels == label).sum()) / max(1, int((known_labels == label).sum()))
        copies[int(label)] = max(1, round(full_copies * share))
    return copies


def learn_noise(model: nn.Module, copies: dict[int, int], task: UnlearningTask, params: Params,
                generator: torch.Generator) -> tuple[torch.Tensor | TokenBatch, torch.Tensor]:
    """``noise_rows`` inputs per class that maximise the model's loss on that class, kept
    bounded by an L2 penalty; the model itself is frozen (and in eval mode) meanwhile. For a
    text model the noise is vectors in its input embedding space."""
    labels = torch.tensor(list(copies)).repeat_interleave(params.noise_rows).to(task.device)
    x_train = task.data.x_train
    if not isinstance(x_train, TokenBatch):
        noise = _noise((len(labels), *x_train.shape[1:]), generator, task.device)
        _maximise_loss(model, noise, labels, lambda inputs: inputs, task, params)
        return noise.detach().cpu(), labels.cpu()
    embeddings = _embedding_table(model)
    width = x_train[task.data.forget_idx].trimmed().shape[1]
    noise = _noise((len(labels), width, embeddings.embedding_dim), generator, task.device)
    mask = torch.ones(len(labels), width, dtype=torch.int64, device=task.device)
    _maximise_loss(model, noise, labels,
                   lambda inputs: TokenBatch(inputs_embeds=inputs, attention_mask=mask),
                   task, params)
    return (TokenBatch(inputs_embeds=noise.detach().cpu(), attention_mask=mask.cpu()),
            labels.cpu())


def _noise(shape: tuple[int, ...], generator: torch.Generator,
           device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device).requires_grad_(True)


def _maximise_loss(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor,
                   as_input: Callable[[torch.Tensor], torch.Tensor | TokenBatch],
                   task: UnlearningTask, params: Params) -> None:
    """Adam on ``noise`` (the model frozen) towards a high loss on ``labels``."""
    optimizer = torch.optim.Adam([noise], lr=params.noise_lr)
    progress = progress_span(task.progress, 0.0, NOISE_SHARE)
    model.eval()
    with only_these_trainable(model, []):
        for step in range(1, params.noise_steps + 1):
            bound = params.noise_l2 * noise.pow(2).flatten(1).sum(1).mean()
            loss = -F.cross_entropy(model(as_input(noise)), labels) + bound
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress(step / params.noise_steps)


def _embedding_table(model: nn.Module) -> nn.Embedding:
    getter = getattr(model, "input_embeddings", None)
    table = getter() if getter is not None else None
    if not isinstance(table, nn.Embedding):
        raise ValueError("unsir on token inputs needs a model with an input embedding table")
    return table


@torch.no_grad()
def _embedded(model: nn.Module, x: TokenBatch) -> TokenBatch:
    """Token ids as the model's (fixed) input embeddings, to share a batch with noise."""
    table = _embedding_table(model)
    ids = x["input_ids"].to(table.weight.device)
    return TokenBatch(inputs_embeds=table(ids).cpu(), attention_mask=x["attention_mask"])


def with_noise(retain: Batch, noise: torch.Tensor, noise_labels: torch.Tensor,
               copies: dict[int, int], model: nn.Module | None = None) -> Batch:
    """The impair set: the retain sample plus each noise row repeated as often as its class
    asks (the authors repeat one noise batch 80 times rather than learn 80 batches)."""
    repeats = torch.tensor([copies[int(label)] for label in noise_labels])
    if isinstance(noise, TokenBatch) and model is not None:
        retain = (_embedded(model, retain[0]), retain[1])
    return (torch.cat([noise.repeat_interleave(repeats, 0), retain[0]]),
            torch.cat([noise_labels.repeat_interleave(repeats), retain[1]]))


def sample_per_class(data: UnlearningData, per_class: int, generator: torch.Generator) -> Batch:
    """Up to ``per_class`` random D_r rows of every class D_r holds."""
    labels = data.y_train[data.retain_idx]
    chosen = []
    for label in labels.unique().tolist():
        rows = data.retain_idx[labels == label]
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    rows = torch.cat(chosen)
    return data.x_train[rows], data.y_train[rows]
