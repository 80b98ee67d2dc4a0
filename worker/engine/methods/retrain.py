"""Retraining from scratch on the retained data: exact unlearning, and the gold standard every
approximate method is measured against."""

from __future__ import annotations

from pydantic import Field

from worker.engine.methods._base import (
    MethodParams,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.training import seeded, train


class RetrainParams(MethodParams):
    epochs: int | None = Field(None, ge=1, le=1000,
                               description="Epochs; default the training recipe's.")


@register_method
class Retrain(UnlearningMethod):
    name = "retrain"
    summary = "Train a freshly initialised model on the retained data with the original recipe."
    reference = ("Exact unlearning: Cao and Yang, \"Towards Making Systems Forget with Machine "
                 "Unlearning\", IEEE S&P 2015; Bourtoule et al., \"Machine Unlearning\", "
                 "IEEE S&P 2021.")
    Params = RetrainParams
    exact = True

    def unlearn(self, task: UnlearningTask, params: RetrainParams) -> UnlearningOutcome:
        data = task.data
        if len(data.retain_idx) == 0:
            raise ValueError("the retain set is empty: there is nothing to retrain on")
        recipe = task.recipe.model_copy(update={"seed": params.seed})
        epochs = params.epochs or recipe.epochs
        with seeded(params.seed):
            model = task.build_fresh()
            train(model, data.x_train[data.retain_idx], data.y_train[data.retain_idx], recipe,
                  task.device, epochs=epochs, progress=task.progress)
        return UnlearningOutcome(model, metrics={"epochs": epochs})
