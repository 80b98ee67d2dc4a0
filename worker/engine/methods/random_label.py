"""Random labelling: train on D_r with its labels together with D_f under random wrong labels,
so the model's associations for the forgotten rows are overwritten rather than ascended."""

from __future__ import annotations

import torch
from pydantic import Field

from worker.engine.methods._base import (
    MethodParams,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.methods._baseline_utils import (
    relabelled_union,
    require_rows,
    train_cross_entropy,
)
from worker.engine.methods._common import working_copy
from worker.engine.training import seeded_generator


class Params(MethodParams):
    epochs: int = Field(2, ge=1, le=100, description="Passes over D_r ∪ D_f (relabelled).")
    lr: float = Field(0.005, gt=0, le=10, description="SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="SGD weight decay.")
    batch_size: int = Field(64, ge=1, le=8192, description="Rows per step, D_r and D_f mixed.")


@register_method
class RandomLabel(UnlearningMethod):
    name = "random-label"
    summary = (
        "Cross-entropy training on the retain set together with the forget set under random "
        "wrong labels (never another forgotten class)."
    )
    reference = (
        "Graves, Nagisetty, Ganesh. Amnesiac Machine Learning. AAAI 2021. arXiv:2010.10981; "
        "as the 'random labeling' baseline of Golatkar, Achille, Soatto, Eternal Sunshine of "
        "the Spotless Net, CVPR 2020, arXiv:1911.04933, and Fan et al., SalUn, ICLR 2024, "
        "arXiv:2310.12508."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        require_rows(task.data)
        model = working_copy(task)
        generator = seeded_generator(params.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=params.lr,
                                    momentum=params.momentum,
                                    weight_decay=params.weight_decay)
        losses = train_cross_entropy(
            model, relabelled_union(task.data, generator), optimizer,
            epochs=params.epochs, batch_size=params.batch_size, generator=generator,
            device=task.device, progress=task.progress)
        return UnlearningOutcome(model=model.eval(), metrics={"epoch_losses": losses})
