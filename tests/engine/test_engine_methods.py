"""The baselines on a real (small) problem: forget one digit class of a trained MLP."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from engine_helpers import unlearning_data
from pydantic import ValidationError

from worker.engine.architectures import build_model
from worker.engine.methods import METHODS, JobCancelled, UnlearningTask
from worker.engine.metrics import evaluate
from worker.engine.training import TrainingRecipe, seeded, train

CPU = torch.device("cpu")
FORGOTTEN_CLASS = 3
RECIPE = TrainingRecipe(epochs=10, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def setting(digits):
    """A trained MLP and a request to forget one class, with the scores before unlearning."""
    config = {"hidden": [64], "num_classes": 10, "input_shape": digits.input_shape}
    data = unlearning_data(digits, [FORGOTTEN_CLASS])
    with seeded(0):
        model = build_model("mlp", config)
        train(model, data.x_train, data.y_train, RECIPE, CPU)
    before = evaluate(model, data, CPU, seed=0)
    assert before["forget_accuracy"] > 0.9 and before["test_accuracy"] > 0.9
    return model, config, data, before


def make_task(setting, progress=None) -> UnlearningTask:
    model, config, data, _ = setting
    task = UnlearningTask(model=model, build_fresh=lambda: build_model("mlp", config), data=data,
                          recipe=RECIPE, device=CPU)
    if progress is not None:
        task.progress = progress
    return task


def run(name: str, task: UnlearningTask, **params):
    method = METHODS.get(name)
    return method().run(task, method.Params(**params))


def test_baselines_are_registered_with_typed_params():
    for name in ("finetune", "retrain"):
        method = METHODS.get(name)
        assert method.summary and method.reference
        assert "seed" in method.params_schema()["properties"]
    assert METHODS.get("finetune").Params().epochs == 3
    with pytest.raises(ValidationError):
        METHODS.get("finetune").Params(epochs=0)
    with pytest.raises(ValidationError):
        METHODS.get("retrain").Params(unknown=1)


def test_retrain_forgets_the_class_and_keeps_the_rest(setting):
    fractions: list[float] = []
    outcome = run("retrain", make_task(setting, fractions.append))
    after = evaluate(outcome.model, setting[2], CPU, seed=0)
    assert after["forget_accuracy"] < 0.02
    assert after["retain_accuracy"] > 0.95
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert outcome.metrics == {"epochs": RECIPE.epochs}


def test_finetune_lowers_forget_accuracy_and_leaves_the_base_model(setting):
    model, _, data, before = setting
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    outcome = run("finetune", make_task(setting))
    after = evaluate(outcome.model, data, CPU, seed=0)
    assert after["forget_accuracy"] < before["forget_accuracy"] - 0.02
    assert after["retain_accuracy"] > 0.95
    assert outcome.metrics == {"epochs": 3, "lr": pytest.approx(RECIPE.lr / 5)}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])


def test_same_seed_same_model(setting):
    first = run("retrain", make_task(setting), epochs=1, seed=7).model.state_dict()
    second = run("retrain", make_task(setting), epochs=1, seed=7).model.state_dict()
    other = run("retrain", make_task(setting), epochs=1, seed=8).model.state_dict()
    for name, tensor in first.items():
        torch.testing.assert_close(tensor, second[name])
    assert any(not torch.equal(tensor, other[name]) for name, tensor in first.items())


@pytest.mark.parametrize("name", ["finetune", "retrain"])
def test_cancellation_propagates(setting, name):
    def cancel(_fraction: float) -> None:
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        run(name, make_task(setting, cancel))


@pytest.mark.parametrize("name", ["finetune", "retrain"])
def test_empty_retain_set_is_an_error(setting, name):
    task = make_task(setting)
    everything = torch.arange(len(task.data.y_train))
    task.data = replace(task.data, forget_idx=everything, retain_idx=everything[:0])
    with pytest.raises(ValueError, match="retain set is empty"):
        run(name, task)
