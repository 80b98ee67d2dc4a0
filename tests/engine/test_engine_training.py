"""``train_from_file``: the engine side of ``lethe train``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from worker.engine.architectures import build_model
from worker.engine.data.formats import DatasetFormatError
from worker.engine.training import (
    TrainingRecipe,
    iterate_batches,
    seeded,
    train,
    train_from_file,
)


def test_train_from_file_writes_a_loadable_checkpoint(tmp_path, digits_path):
    out = tmp_path / "mlp.safetensors"
    summary = train_from_file(digits_path, "mlp", {"hidden": [32]}, out_path=out, epochs=3,
                              seed=1, recipe={"batch_size": 64}, show_progress=False)
    assert summary["architecture_config"] == {"num_classes": 10, "input_shape": [1, 8, 8],
                                              "hidden": [32], "dropout": 0.0}
    assert summary["training_config"]["epochs"] == 3
    assert summary["training_config"]["seed"] == 1
    assert summary["training_config"]["batch_size"] == 64
    assert summary["num_train"] == 1437 and summary["num_test"] == 360
    assert summary["train_accuracy"] > 0.8 and summary["test_accuracy"] > 0.8

    model = build_model("mlp", summary["architecture_config"])
    model.load_state_dict(load_file(out), strict=True)
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["architecture"]) == "mlp"


def test_train_from_file_is_reproducible(tmp_path, digits_path):
    runs = [train_from_file(digits_path, "mlp", {"hidden": [8]}, out_path=tmp_path / f"{i}.st",
                            epochs=1, seed=3, show_progress=False) for i in range(2)]
    first, second = (load_file(run["out_path"]) for run in runs)
    for name, tensor in first.items():
        torch.testing.assert_close(tensor, second[name])


def test_seeded_restores_the_global_generator():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(5):
        torch.rand(10)
    torch.testing.assert_close(torch.rand(3), expected)


def test_train_from_file_rejects_bad_input(tmp_path):
    bad = tmp_path / "data.csv"
    bad.write_text("x,y\n")
    with pytest.raises(DatasetFormatError):
        train_from_file(bad, "mlp", out_path=tmp_path / "m.safetensors", show_progress=False)


def test_batch_norm_models_never_train_on_a_ragged_last_batch():
    # 1,800 rows in batches of 128 leave 8: BatchNorm trained on those 8 kept a ResNet at 92%
    # on its own training rows, where full batches reach 99.9%.
    x, y = torch.randn(264, 6), torch.randint(0, 3, (264,))
    sizes = [len(xb) for xb, _ in iterate_batches(x, y, 128, shuffle=True, drop_last=True)]
    assert sizes == [128, 128]
    assert [len(xb) for xb, _ in iterate_batches(x[:100], y[:100], 128, shuffle=False,
                                                 drop_last=True)] == [100]  # the only batch
    seen: list[int] = []
    for layers, expected in (([nn.Linear(6, 3)], [128, 128, 8]),
                             ([nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)],
                              [128, 128])):
        seen.clear()
        model = nn.Sequential(*layers)
        model.register_forward_pre_hook(lambda _m, inputs: seen.append(len(inputs[0])))
        train(model, x, y, TrainingRecipe(epochs=1, batch_size=128), torch.device("cpu"))
        assert seen == expected
