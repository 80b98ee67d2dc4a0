"""Every catalogue architecture builds for digits-sized and CIFAR-sized inputs."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from worker.engine.architectures import ARCHITECTURES, Classifier, build_model
from worker.engine.training import save_state_dict

SMALL_CONFIGS = {  # narrow versions, to keep the tests fast
    "mlp": {"hidden": [16]},
    "allcnn": {"width": 0.1},
    "smallvgg": {"widths": [8, 16, 16, 16], "hidden": 16},
    "resnet18": {"width": 4},
}
SHAPES = [(1, 8, 8), (3, 32, 32)]


def build(name: str, shape: tuple[int, ...], num_classes: int = 7) -> Classifier:
    torch.manual_seed(0)
    return build_model(name, {**SMALL_CONFIGS[name], "num_classes": num_classes,
                              "input_shape": shape})


def test_catalogue_lists_every_architecture():
    assert set(SMALL_CONFIGS) <= set(ARCHITECTURES.names())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_forward_is_classifier_of_features(name, shape):
    model = build(name, shape).eval()
    x = torch.randn(3, *shape)
    features = model.features(x)
    assert isinstance(model.classifier, torch.nn.Linear)
    assert features.shape == (3, model.classifier.in_features)
    logits = model(x)
    assert logits.shape == (3, 7)
    torch.testing.assert_close(model.classifier(features), logits)


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_state_dict_round_trips_through_safetensors(tmp_path, name):
    model = build(name, (3, 32, 32))
    model.train()(torch.randn(4, 3, 32, 32))  # move BatchNorm running statistics off defaults
    save_state_dict(model, tmp_path / "model.safetensors")
    fresh = build(name, (3, 32, 32))
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


def test_default_resnet18_is_the_usual_size():
    model = build_model("resnet18", {"num_classes": 10, "input_shape": (3, 32, 32)})
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


@pytest.mark.parametrize("name", ["allcnn", "smallvgg", "resnet18"])
def test_convolutional_nets_need_image_input(name):
    with pytest.raises(ValidationError, match="channels, height, width"):
        build_model(name, {"num_classes": 3, "input_shape": (64,)})


@pytest.mark.parametrize(("name", "bad"), [
    ("allcnn", {"width": 0}), ("smallvgg", {"widths": [0]}), ("resnet18", {"width": 0}),
    ("resnet18", {"depth": 34}),
])
def test_configs_are_validated(name, bad):
    with pytest.raises(ValidationError):
        build_model(name, {"num_classes": 3, "input_shape": (3, 8, 8), **bad})
