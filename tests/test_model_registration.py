"""Registration keeps what `lethe train` recorded in the weights: the architecture and both
configs fill in what the form leaves out, and a form that contradicts them is refused."""

from __future__ import annotations

import io

import pytest

RECIPE = {"epochs": 2, "lr": 0.1, "batch_size": 32}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, digits_npz) -> bytes:
    """Weights from `lethe train`'s own function: an MLP(32) with a recipe of its own."""
    from worker.engine.training import train_from_file

    folder = tmp_path_factory.mktemp("recorded")
    (folder / "digits.npz").write_bytes(digits_npz)
    train_from_file(folder / "digits.npz", "mlp", {"hidden": [32]}, out_path=folder / "w.st",
                    epochs=2, recipe=RECIPE, show_progress=False)
    return (folder / "w.st").read_bytes()


def register(api, dataset_id: str, weights: bytes, **fields):
    return api.post("/v1/models", data={"name": "m", "dataset_id": dataset_id, **fields},
                    files={"weights": ("w.safetensors", io.BytesIO(weights))})


def test_the_recorded_configs_are_used_when_the_form_gives_none(sqlite_api, digits_npz,
                                                                trained):
    from app.models.weights import recorded_metadata

    recorded = recorded_metadata(trained)
    assert recorded["architecture"] == "mlp"
    dataset = sqlite_api.upload_dataset(digits_npz).json()
    response = register(sqlite_api, dataset["id"], trained)
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["architecture"] == "mlp"
    assert model["architecture_config"] == recorded["architecture_config"]
    assert model["architecture_config"]["hidden"] == [32]
    assert model["training_config"] == recorded["training_config"]
    assert {k: model["training_config"][k] for k in RECIPE} == RECIPE

    # Saying the same (even in part: defaults are filled in before comparing) is fine.
    same = register(sqlite_api, dataset["id"], trained, architecture="mlp",
                    architecture_config='{"hidden": [32]}',
                    training_config='{"epochs": 2, "lr": 0.1, "batch_size": 32}')
    assert same.status_code == 201, same.text
    assert same.json()["training_config"] == model["training_config"]


@pytest.mark.parametrize(("fields", "named"), [
    ({"architecture": "allcnn"}, "architecture"),
    ({"architecture_config": '{"hidden": [64]}'}, "architecture_config.hidden"),
    ({"training_config": '{"epochs": 30}'}, "training_config.epochs"),
    ({"training_config": '{"lr": 0.05, "batch_size": 32, "epochs": 2}'},
     "training_config.lr"),
])
def test_a_form_that_contradicts_the_recording_is_refused(sqlite_api, digits_npz, trained,
                                                         fields, named):
    dataset = sqlite_api.upload_dataset(digits_npz).json()
    response = register(sqlite_api, dataset["id"], trained, **fields)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert named in [e["field"] for e in problem["errors"]], problem
    assert "recorded" in problem["detail"]
    assert sqlite_api.get("/v1/models").json()["items"] == []


def test_weights_that_record_nothing_still_need_the_form(sqlite_api, digits_npz,
                                                         digits_weights):
    dataset = sqlite_api.upload_dataset(digits_npz).json()
    missing = register(sqlite_api, dataset["id"], digits_weights)
    assert missing.status_code == 422 and "architecture: required" in missing.json()["detail"]
    shapes = register(sqlite_api, dataset["id"], digits_weights, architecture="mlp")
    assert shapes.status_code == 422 and "wrong shapes" in shapes.json()["detail"]
    ok = register(sqlite_api, dataset["id"], digits_weights, architecture="mlp",
                  architecture_config='{"hidden": [64]}')
    assert ok.status_code == 201, ok.text


def test_a_recording_for_another_dataset_is_refused(sqlite_api, trained):
    import numpy as np

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=rng.integers(0, 255, (60, 8, 8), dtype=np.uint8),
             y_train=np.arange(60) % 3, x_test=rng.integers(0, 255, (9, 8, 8), dtype=np.uint8),
             y_test=np.arange(9) % 3)
    three = sqlite_api.upload_dataset(buffer.getvalue(), name="three").json()
    response = register(sqlite_api, three["id"], trained)
    assert response.status_code == 422
    assert "num_classes" in response.json()["detail"] and "recorded" in response.json()["detail"]
