"""Architectures from installed plugins (the ``lethe.architectures`` entry-point group): the
example plugin in plugins/lethe-example-arch is listed, registered and unlearned like a
built-in; a broken plugin is logged and skipped."""

from __future__ import annotations

import importlib.metadata
import logging
import sys

import pytest
import torch
from safetensors.torch import save

from worker.engine.architectures import ARCHITECTURES, build_model
from worker.engine.registry import Registry

pytestmark = pytest.mark.skipif(
    "conv1d" not in ARCHITECTURES,
    reason="the example plugin is not installed (make install, or pip install -e "
           "plugins/lethe-example-arch)")


def test_the_example_plugin_is_listed_with_its_config_schema(sqlite_api):
    listed = {a["name"]: a for a in sqlite_api.get("/v1/architectures").json()}
    assert {"mlp", "allcnn", "hf-image-classifier", "hf-text-classifier", "conv1d"} <= set(listed)
    schema = listed["conv1d"]["config_schema"]
    assert {"channels", "depth", "kernel_size", "num_classes"} <= set(schema["properties"])
    assert "lethe-example-arch" in listed["conv1d"]["summary"]
    assert ARCHITECTURES.plugin_of["conv1d"] == "lethe-example-arch"


def test_a_deletion_request_completes_on_the_plugins_architecture(sqlite_api, digits_npz):
    from worker.engine.data.formats import load_dataset_file
    from worker.engine.training import TrainingRecipe, train

    torch.set_num_threads(1)
    dataset = sqlite_api.upload_dataset(digits_npz).json()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "digits.npz"
        path.write_bytes(digits_npz)
        arrays = load_dataset_file(path, "digits.npz")
    config = {"num_classes": 10, "input_shape": [1, 8, 8], "channels": 16, "depth": 2}
    torch.manual_seed(0)
    model = build_model("conv1d", config)
    train(model, arrays.inputs(arrays.x_train), torch.from_numpy(arrays.y_train),
          TrainingRecipe(epochs=8, lr=0.01, optimizer="adam", batch_size=64), torch.device("cpu"))
    weights = save({k: v.contiguous() for k, v in model.state_dict().items()})
    response = sqlite_api.register_model(dataset["id"], weights, architecture="conv1d",
                                         config='{"channels": 16, "depth": 2}')
    assert response.status_code == 201, response.text
    registered = response.json()
    assert registered["architecture_config"]["kernel_size"] == 3  # the plugin's default

    request = sqlite_api.post(f"/v1/models/{registered['id']}/deletion-requests",
                              json={"classes": [3], "method": "projected-gradient"})
    assert request.status_code == 202, request.text
    job = sqlite_api.wait_for_job(request.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["metrics"]["forget_accuracy"] <= 0.05
    checkpoint = sqlite_api.get(f"/v1/models/{registered['id']}/versions/2/checkpoint")
    assert checkpoint.status_code == 200


BROKEN = "import nonexistent_dependency_of_a_plugin\n"
HALF = """
from torch import nn
from worker.engine.architectures import ArchitectureConfig, Classifier, register_architecture

@register_architecture("half-plugin-net", ArchitectureConfig, "registered, then the import fails")
def build(config):
    raise AssertionError("never built")

raise RuntimeError("the rest of this plugin is broken")
"""
TAKEN = """
from worker.engine.architectures import ArchitectureConfig, register_architecture

@register_architecture("mlp", ArchitectureConfig, "a plugin that takes a built-in's name")
def build(config):
    raise AssertionError("never built")
"""


def test_a_broken_plugin_is_logged_and_skipped(tmp_path, monkeypatch, caplog, sqlite_api):
    for name, source in (("broken_plugin", BROKEN), ("half_plugin", HALF),
                         ("taken_plugin", TAKEN)):
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [importlib.metadata.EntryPoint(name, f"{name}_plugin", "lethe.test-architectures")
              for name in ("broken", "half", "taken")]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [p for p in points if p.group == group])
    before = ARCHITECTURES.names()
    with caplog.at_level(logging.WARNING, logger="worker.engine.registry"):
        ARCHITECTURES._load_plugins("lethe.test-architectures")
    assert set(ARCHITECTURES.failed_plugins) >= {"broken", "half", "taken"}
    assert "ModuleNotFoundError" in ARCHITECTURES.failed_plugins["broken"]
    assert "registered twice" in ARCHITECTURES.failed_plugins["taken"]
    # What the half-broken plugin registered before failing is taken back.
    assert ARCHITECTURES.names() == before and "half-plugin-net" not in ARCHITECTURES
    assert sum("failed to load and is skipped" in r.message for r in caplog.records) == 3
    assert ARCHITECTURES.get("mlp").summary.startswith("Fully connected")
    response = sqlite_api.get("/v1/architectures")
    assert response.status_code == 200 and "conv1d" in {a["name"] for a in response.json()}
    for name in ("broken", "half", "taken"):
        ARCHITECTURES.failed_plugins.pop(name)
        sys.modules.pop(f"{name}_plugin", None)


def test_a_fresh_registry_survives_a_plugin_that_raises_at_import(tmp_path, monkeypatch):
    (tmp_path / "exploding_plugin.py").write_text("raise SystemError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    point = importlib.metadata.EntryPoint("exploding", "exploding_plugin", "lethe.test-methods")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [point] if group == point.group else [])
    registry: Registry[object] = Registry("thing", "worker.engine.methods",
                                          entry_point_group="lethe.test-methods")
    assert isinstance(registry.names(), list)
    assert registry.failed_plugins == {"exploding": "SystemError: boom"}
