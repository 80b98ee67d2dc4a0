"""Fine-tuning baseline: keep training on the retained data only, and let the model forget
the rest the way networks forget what they stop seeing."""

from __future__ import annotations

import copy

from pydantic import Field

from worker.engine.methods._base import (
    MethodParams,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.training import seeded, train

# The usual fine-tune rate (methods.md: 0.01-0.02) is a fraction of the training rate;
# scaling the recipe's rate keeps it sensible for Adam-trained models too.
DEFAULT_LR_DIVISOR = 5


class FinetuneParams(MethodParams):
    epochs: int = Field(3, ge=1, le=100, description="Passes over the retained data.")
    lr: float | None = Field(
        None, gt=0, le=10,
        description="Learning rate; default a fifth of the training recipe's (0.01 for the "
                    "default recipe).")


@register_method
class Finetune(UnlearningMethod):
    name = "finetune"
    summary = "Fine-tune on the retained data only (cross-entropy, a few epochs, small lr)."
    reference = ("Baseline of Golatkar, Achille, Soatto, \"Eternal Sunshine of the Spotless "
                 "Net\", CVPR 2020; Fan et al., \"SalUn\", ICLR 2024 (Table 1).")
    Params = FinetuneParams

    def unlearn(self, task: UnlearningTask, params: FinetuneParams) -> UnlearningOutcome:
        data = task.data
        if len(data.retain_idx) == 0:
            raise ValueError("the retain set is empty: there is nothing to fine-tune on")
        lr = params.lr if params.lr is not None else task.recipe.lr / DEFAULT_LR_DIVISOR
        recipe = task.recipe.model_copy(update={"seed": params.seed})
        model = copy.deepcopy(task.model)  # the base version stays as it was
        with seeded(params.seed):
            train(model, data.x_train[data.retain_idx], data.y_train[data.retain_idx], recipe,
                  task.device, epochs=params.epochs, lr=lr, progress=task.progress)
        return UnlearningOutcome(model, metrics={"epochs": params.epochs, "lr": lr})
