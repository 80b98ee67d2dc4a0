"""Hugging Face classifiers from their files, no user code: registered, unlearned by each core
method through the API, downloaded and reloaded by transformers' own from_pretrained.

The models are tiny (a 2-layer ViT on 8×8 images, a 2-layer BERT with a word-level
tokenizer over the test's own words), built from configs by ``lethe train``'s code and
trained here for a few seconds: nothing is downloaded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from tests.hf_fixtures import (
    TEXT_COLUMNS,
    bert_config,
    image_npz,
    text_csv,
    vit_config,
)
from tests.test_api_rejects import assert_problem, stored_state

CORE = ["feature-constraint", "projected-gradient", "deepclean"]


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's cores are shared: one thread is many times faster for tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> dict:
    from worker.engine.hf_files import train_hf_from_file

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vit")
    data = image_npz(root / "images.npz")
    summary = train_hf_from_file(data, "hf-image-classifier", {"hf_config": vit_config()},
                                 out_dir=root / "model", recipe={"lr": 3e-3, "epochs": 12},
                                 show_progress=False)
    assert summary["train_accuracy"] > 0.95, summary
    return {"dataset": data, "dir": root / "model", "summary": summary}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> dict:
    from worker.engine.data.tables import TableColumns
    from worker.engine.hf_files import train_hf_from_file

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bert")
    data = text_csv(root / "topics.csv")
    summary = train_hf_from_file(
        data, "hf-text-classifier", {"hf_config": bert_config()}, out_dir=root / "model",
        recipe={"lr": 3e-3, "epochs": 15, "warmup_ratio": 0.0}, show_progress=False,
        columns=TableColumns(label="label", text="text", split="split", id="id"))
    assert summary["train_accuracy"] > 0.95, summary
    return {"dataset": data, "dir": root / "model", "summary": summary}


def upload(api, path: Path, **fields) -> dict:
    response = api.post("/v1/datasets", data={"name": path.stem, **fields},
                        files={"file": (path.name, io.BytesIO(path.read_bytes()))})
    assert response.status_code == 201, response.text
    return response.json()


FILES = {"config": "config.json", "tokenizer": "tokenizer.json",
         "tokenizer_config": "tokenizer_config.json",
         "preprocessor_config": "preprocessor_config.json"}


def register(api, dataset_id: str, folder: Path, architecture: str, *,
             replace: dict[str, bytes] | None = None, skip: tuple[str, ...] = (),
             weights: bytes | None = None, **form):
    weights = weights or (folder / "model.safetensors").read_bytes()
    files = {"weights": ("model.safetensors", io.BytesIO(weights))}
    for field, name in FILES.items():
        content = (replace or {}).get(field)
        if content is None and (folder / name).exists() and field not in skip:
            content = (folder / name).read_bytes()
        if content is not None:
            files[field] = (name, io.BytesIO(content))
    return api.post("/v1/models", data={"name": architecture, "architecture": architecture,
                                        "dataset_id": dataset_id, **form}, files=files)


def forget(api, model_id: str, body: dict) -> dict:
    response = api.post(f"/v1/models/{model_id}/deletion-requests", json=body)
    assert response.status_code == 202, response.text
    return api.wait_for_job(response.json()["job_id"], timeout=300)


def reload_with_transformers(api, model_id: str, version: int, folder: Path, out: Path,
                             family: str):
    """from_pretrained on a folder of the registered config.json and the downloaded
    checkpoint: transformers' own loader, no Lethe code."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    response = api.get(f"/v1/models/{model_id}/versions/{version}/checkpoint")
    assert response.status_code == 200
    out.mkdir()
    (out / "config.json").write_bytes((folder / "config.json").read_bytes())
    (out / "model.safetensors").write_bytes(response.content)
    auto = (AutoModelForImageClassification if family == "image"
            else AutoModelForSequenceClassification)
    model, info = auto.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # every tensor loaded, none missing or unexpected
    return model.eval(), response.content


def lethe_model(config: dict, checkpoint: bytes):
    from safetensors.torch import load

    from worker.engine.architectures import build_model

    model = build_model(config["architecture"], config["architecture_config"])
    model.load_state_dict(load(checkpoint))
    return model.eval()


# (architecture, method, scenario) -> the gate's verdict on the core method, for the report.
VERDICTS: dict[tuple[str, str, str], str] = {}


def first_verdict(job: dict) -> str:
    first = job["metrics"]["candidates"][0]
    failed = [c["name"] for c in first["gate"]["criteria"] if not c["passed"]]
    return first["verdict"] + (f" ({', '.join(failed)})" if failed else "")


def check_run(job: dict, method: str, kind: str) -> None:
    """The job ran the core method first, and the gate's verdict on it is recorded."""
    assert job["status"] == "succeeded", job
    first = job["metrics"]["candidates"][0]
    assert first["method"] == method and first["error"] is None, first
    assert first["verdict"] in ("passed", "failed") and first["gate"]["criteria"], first
    # What was published passed the gate: the core method's version, or retrain's when the
    # gate refused it (the default fallback chain).
    assert job["metrics"]["gate"]["verdict"] == "passed"
    assert job["metrics"]["method"] in (method, "retrain")
    if kind == "class":
        assert job["metrics"]["forget_accuracy"] <= 0.05, job["metrics"]
    print(f"{method} {kind}: {first_verdict(job)}; published {job['metrics']['method']}")


@pytest.mark.parametrize("method", CORE)
def test_an_hf_image_classifier_forgets_with_each_core_method(sqlite_api, vit, method, tmp_path):
    dataset = upload(sqlite_api, vit["dataset"])
    response = register(sqlite_api, dataset["id"], vit["dir"], "hf-image-classifier")
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["architecture_config"]["hf_config"]["model_type"] == "vit"
    assert model["training_config"]["optimizer"] == "adamw"  # what lethe train recorded

    job = forget(sqlite_api, model["id"], {"classes": [1], "method": method})
    check_run(job, method, "class")
    VERDICTS[(model["architecture"], method, "class")] = first_verdict(job)
    ids = [s["id"] for s in sqlite_api.get(f"/v1/datasets/{dataset['id']}/samples",
                                           params={"limit": 500}).json()["items"]
           if not s["deleted"]][::9][:20]
    job = forget(sqlite_api, model["id"], {"sample_ids": ids, "method": method})
    check_run(job, method, "samples")
    VERDICTS[(model["architecture"], method, "samples")] = first_verdict(job)

    hf_model, checkpoint = reload_with_transformers(
        sqlite_api, model["id"], 3, vit["dir"], tmp_path / "v3", "image")
    ours = lethe_model(model, checkpoint)
    pixels = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(hf_model(pixel_values=pixels).logits, ours(pixels), atol=1e-5)


@pytest.mark.parametrize("method", CORE)
def test_an_hf_text_classifier_forgets_with_each_core_method(sqlite_api, bert, method, tmp_path):
    from tokenizers import Tokenizer

    dataset = upload(sqlite_api, bert["dataset"], **TEXT_COLUMNS)
    response = register(sqlite_api, dataset["id"], bert["dir"], "hf-text-classifier")
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["architecture_config"]["max_length"] == 32

    job = forget(sqlite_api, model["id"], {"classes": [0], "method": method})
    check_run(job, method, "class")
    VERDICTS[(model["architecture"], method, "class")] = first_verdict(job)
    ids = [s["id"] for s in sqlite_api.get(f"/v1/datasets/{dataset['id']}/samples",
                                           params={"limit": 500}).json()["items"]
           if not s["deleted"]][::7][:20]
    job = forget(sqlite_api, model["id"], {"sample_ids": ids, "method": method})
    check_run(job, method, "samples")
    VERDICTS[(model["architecture"], method, "samples")] = first_verdict(job)

    hf_model, checkpoint = reload_with_transformers(
        sqlite_api, model["id"], 3, bert["dir"], tmp_path / "v3", "text")
    ours = lethe_model(model, checkpoint)
    tokenizer = Tokenizer.from_file(str(bert["dir"] / "tokenizer.json"))
    encoding = tokenizer.encode("my red apple and a big dog")
    ids_tensor = torch.tensor([encoding.ids])
    mask = torch.tensor([encoding.attention_mask])
    from worker.engine.inputs import TokenBatch

    with torch.no_grad():
        theirs = hf_model(input_ids=ids_tensor, attention_mask=mask).logits
        assert torch.allclose(theirs, ours(TokenBatch(input_ids=ids_tensor,
                                                      attention_mask=mask)), atol=1e-5)


def test_text_is_tokenized_once_per_dataset_blob_and_its_cache_goes_with_the_blob(
        sqlite_api, bert, monkeypatch):
    from sqlalchemy import select

    from app.core.db import new_session
    from app.core.storage import get_blob_store
    from app.datasets.tables import Dataset
    from app.models.tables import Model, TokenizedInputs
    from worker import model_inputs
    from worker.engine.data import tokenized

    dataset = upload(sqlite_api, bert["dataset"], **TEXT_COLUMNS)
    model = register(sqlite_api, dataset["id"], bert["dir"], "hf-text-classifier").json()
    calls = []
    real = tokenized.tokenize_source
    monkeypatch.setattr(model_inputs, "tokenize_source",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model_inputs.text_inputs.cache_clear()
    with new_session() as db:
        row, data = db.get(Model, model["id"]), db.get(Dataset, dataset["id"])
        first = model_inputs.inputs_for(row, data)
        model_inputs.text_inputs.cache_clear()  # a new process: only the blob cache is left
        again = model_inputs.inputs_for(row, data)
    assert len(calls) == 1
    x_train, y_train, x_test, _, classes = again
    assert torch.equal(first[0]["input_ids"], x_train["input_ids"]) and classes == 3
    assert len(x_train) == len(y_train) == dataset["num_train"] and len(x_test) == 90
    assert x_train["input_ids"].shape[1] <= 32  # at most max_length, padded to the longest
    store = get_blob_store()
    with new_session() as db:
        (cache,) = db.scalars(select(TokenizedInputs)).all()
        assert cache.source_blob == data.arrays_blob and store.exists(cache.blob_sha256)
        blob = cache.blob_sha256
        # The dataset's blob is replaced (as an erasure does): its tokens must go with it.
        db.get(Dataset, dataset["id"]).arrays_blob = "0" * 64
        db.commit()
    assert model_inputs.drop_stale_tokenized() == 1
    assert not store.exists(blob)
    with new_session() as db:
        assert db.scalars(select(TokenizedInputs)).all() == []


# --- Hostile uploads ---------------------------------------------------------------------------

def _config(folder: Path, **changes) -> bytes:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return json.dumps(config).encode()


HOSTILE_IMAGE = {
    "model_type outside the allow-list": (
        lambda f: {"config": _config(f, model_type="gpt2")}, ["model_type 'gpt2'", "vit"]),
    "auto_map (remote code)": (
        lambda f: {"config": _config(f, auto_map={"AutoModel": "evil.Model"})},
        ["auto_map", "never loaded"]),
    "trust_remote_code": (
        lambda f: {"config": _config(f, trust_remote_code=True)}, ["trust_remote_code"]),
    "auto_map in a sub-config": (
        lambda f: {"config": _config(f, vision_config={"auto_map": {"a": "b"}})},
        ["auto_map"]),
    "num_labels unlike the dataset's classes": (
        lambda f: {"config": _config(f, num_labels=5, id2label=None, label2id=None)},
        ["5 labels", "3 classes"]),
    "id2label names unlike the dataset's classes": (
        lambda f: {"config": _config(f, id2label={"0": "cat", "1": "dog", "2": "fox"})},
        ["id2label", "do not match"]),
    "oversized config": (
        lambda f: {"config": _config(f, padding="x" * (300 << 10))}, ["config", "262,144"]),
    "a config with a huge layer count": (
        lambda f: {"config": _config(f, num_hidden_layers=10_000)},
        ["num_hidden_layers", "1..96"]),
    "an image size unlike the dataset's": (
        lambda f: {"config": _config(f, image_size=16)}, ["image_size", "does not resize"]),
    "weights of another shape": (
        lambda f: {"config": _config(f, hidden_size=64, intermediate_size=128)},
        ["wrong shapes"]),
    "config.json that is not JSON": (lambda f: {"config": b"{not json"}, ["config", "JSON"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_IMAGE))
def test_hostile_hf_image_registrations_get_a_422_and_store_nothing(configure, vit, case):
    from tests.conftest import api_client

    home = configure()
    with api_client(run_worker=False) as api:
        dataset = upload(api, vit["dataset"])
        before = stored_state(home)
        replace, fragments = HOSTILE_IMAGE[case]
        # Without the weights' own record, so the uploaded files alone decide.
        weights = _unrecorded(vit["dir"] / "model.safetensors")
        response = api.post(
            "/v1/models", data={"name": "m", "architecture": "hf-image-classifier",
                                "dataset_id": dataset["id"]},
            files={"weights": ("model.safetensors", io.BytesIO(weights)),
                   "config": ("config.json", io.BytesIO(replace(vit["dir"])["config"]))})
        assert_problem(response, 422, *fragments)
        assert stored_state(home) == before


def _unrecorded(path: Path) -> bytes:
    from safetensors.torch import load, save

    return save(load(path.read_bytes()))


HOSTILE_TEXT = {
    "no tokenizer": ({"skip": ("tokenizer",)}, ["tokenizer: required"]),
    "a tokenizer that is not one": ({"replace": {"tokenizer": b'{"version": "1.0"}'}},
                                    ["tokenizer.json"]),
    "a tokenizer larger than the vocabulary": (
        {"replace": {"config": None}, "vocab": 8}, ["vocab_size 8"]),
    "distilbert's vocabulary on bert's weights": (
        {"model_type": "distilbert"}, ["do not match the architecture", "missing tensors"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_TEXT))
def test_hostile_hf_text_registrations_get_a_422_and_store_nothing(configure, bert, case):
    from tests.conftest import api_client

    home = configure()
    options, fragments = HOSTILE_TEXT[case]
    with api_client(run_worker=False) as api:
        dataset = upload(api, bert["dataset"], **TEXT_COLUMNS)
        before = stored_state(home)
        replace = dict(options.get("replace", {}))
        if "vocab" in options:
            replace["config"] = _config(bert["dir"], vocab_size=options["vocab"])
        if "model_type" in options:
            replace["config"] = _config(bert["dir"], model_type=options["model_type"])
        folder = bert["dir"]
        files = {"weights": ("model.safetensors",
                             io.BytesIO(_unrecorded(folder / "model.safetensors")))}
        for field, name in FILES.items():
            content = replace.get(field)
            if content is None and (folder / name).exists() and field not in options.get(
                    "skip", ()):
                content = (folder / name).read_bytes()
            if content is not None:
                files[field] = (name, io.BytesIO(content))
        response = api.post("/v1/models", data={"name": "m", "architecture":
                                                "hf-text-classifier",
                                                "dataset_id": dataset["id"]}, files=files)
        body = assert_problem(response, 422)
        assert any(f in body["detail"] for f in fragments), body["detail"]
        assert stored_state(home) == before


# --- Every method on both families --------------------------------------------------------------

def _task_data(family: str, fixture: dict):
    """UnlearningData as a job builds it: the ViT's normalised pixels, or BERT's token ids."""
    from worker.engine.data.tables import TableColumns
    from worker.engine.hf_files import model_inputs_of
    from worker.engine.methods import UnlearningData

    columns = (TableColumns(label="label", text="text", split="split", id="id")
               if family == "text" else None)
    x_train, y_train, x_test, y_test = model_inputs_of(fixture["dataset"], fixture["summary"],
                                                       fixture["dir"], columns)
    # Class 1 (on data this easy, scattered samples are "forgotten" before any step).
    forget = (y_train == 1).nonzero().flatten()
    return UnlearningData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                          forget_idx=forget, retain_idx=(y_train != 1).nonzero().flatten(),
                          num_classes=3, forget_classes=[1])


FAST = {"retrain": {"epochs": 2}, "finetune": {"epochs": 1}, "feature-constraint": {"epochs": 3},
        "projected-gradient": {"max_epochs": 3}, "deepclean": {"max_resets": 1,
                                                               "finetune_epochs": 1},
        "scrub": {"max_steps": 2, "min_steps": 1}, "l1-sparse": {"epochs": 1},
        "neggrad": {"epochs": 1}, "random-label": {"epochs": 1}, "salun": {"epochs": 1},
        "bad-teacher": {"epochs": 1}, "unsir": {"noise_steps": 3}}


@pytest.mark.parametrize("family", ["image", "text"])
def test_every_method_runs_on_both_hf_families(family, vit, bert):
    """Each of the 13 methods unlearns a tiny ViT and a tiny BERT: finite weights, some of
    them changed, logits of the right shape (the batch abstraction carries token ids)."""
    from safetensors.torch import load

    from worker.engine.architectures import build_model
    from worker.engine.methods import METHODS, UnlearningTask
    from worker.engine.training import TrainingRecipe

    fixture = vit if family == "image" else bert
    summary = fixture["summary"]
    arch, config = summary["architecture"], summary["architecture_config"]
    base = build_model(arch, config)
    base.load_state_dict(load((fixture["dir"] / "model.safetensors").read_bytes()))
    data = _task_data(family, fixture)
    recipe = TrainingRecipe.model_validate(summary["training_config"])
    for name, method in METHODS:
        params = method.Params.model_validate(
            {k: v for k, v in FAST.get(name, {}).items() if k in method.Params.model_fields})
        import copy

        task = UnlearningTask(model=copy.deepcopy(base), build_fresh=lambda: build_model(
            arch, config), data=data, recipe=recipe, device=torch.device("cpu"))
        outcome = method().run(task, params)
        after = outcome.model.state_dict()
        assert all(torch.isfinite(t).all() for t in after.values() if t.is_floating_point())
        changed = [k for k, t in base.state_dict().items() if not torch.equal(t, after[k])]
        assert changed, name
        with torch.no_grad():
            logits = outcome.model.eval()(data.x_test[:4])
        assert logits.shape == (4, 3), name


# --- lethe train, lethe bench, preprocessor configs -------------------------------------------

def test_lethe_train_makes_a_from_pretrained_folder_from_a_config(tmp_path):
    from typer.testing import CliRunner

    from app.cli import cli

    data = text_csv(tmp_path / "topics.csv", per_class_train=20, per_class_test=5)
    config = tmp_path / "bert.json"
    config.write_text(json.dumps(bert_config(num_labels=2)))  # lethe train sets the labels
    result = CliRunner().invoke(cli, [
        "train", "--dataset", str(data), "--architecture", "hf-text-classifier",
        "--config", str(config), "--text-column", "text", "--split-column", "split",
        "--epochs", "1", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["id2label"] == {"0": "animal", "1": "colour", "2": "fruit"}
    assert summary["architecture_config"]["hf_config"] == written
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "out" / "tokenizer.json"))
    assert tokenizer("red apple").input_ids[0] == tokenizer.convert_tokens_to_ids("[CLS]")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.num_labels == 3


def test_lethe_bench_runs_an_hf_architecture_or_says_what_is_missing():
    from worker.bench import BenchConfigError
    from worker.bench.runner import resolve_suite, with_architecture

    suite = resolve_suite("smoke", None)
    vit = {"hf_config": vit_config(num_channels=1, num_labels=10)}
    replaced = with_architecture(suite, "hf-image-classifier", vit)
    pair = replaced.pairs[0]
    assert pair.architecture == "hf-image-classifier" and pair.architecture_config == vit
    assert pair.recipe.optimizer == "adamw" and pair.recipe.epochs == suite.pairs[0].recipe.epochs
    with pytest.raises(BenchConfigError, match="needs --architecture-config with hf_config"):
        with_architecture(suite, "hf-image-classifier", {})
    with pytest.raises(BenchConfigError, match="needs --dataset: a text table"):
        with_architecture(suite, "hf-text-classifier", {"hf_config": bert_config()})
    with pytest.raises(BenchConfigError, match="unknown architecture"):
        with_architecture(suite, "no-such-net", None)


def test_a_preprocessor_config_normalises_the_pixels_a_job_sees(sqlite_api, vit, monkeypatch):
    from app.core.db import new_session
    from app.datasets.tables import Dataset
    from app.models.tables import Model
    from worker import model_inputs
    from worker.execution import model_inputs as default_inputs

    preprocessor = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    dataset = upload(sqlite_api, vit["dataset"])
    # A model from elsewhere: weights without lethe train's record, its preprocessor's own.
    weights = _unrecorded(vit["dir"] / "model.safetensors")
    response = register(sqlite_api, dataset["id"], vit["dir"], "hf-image-classifier",
                        replace={"preprocessor_config": json.dumps(preprocessor).encode()},
                        weights=weights)
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["architecture_config"]["preprocessor"] == preprocessor
    with new_session() as db:
        x_train, y_train, _, _, classes = model_inputs.inputs_for(
            db.get(Model, model["id"]), db.get(Dataset, dataset["id"]))
        arrays, plain, _ = default_inputs(db.get(Dataset, dataset["id"]).arrays_blob)
    pixels = torch.from_numpy(arrays.x_train).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x_train, (pixels - 0.5) / 0.25, atol=1e-5)
    assert not torch.allclose(x_train, plain) and classes == 3 and len(y_train) == 300
    # A dataset past job_resident_dataset_bytes is read row by row, normalised alike.
    from app.core import config

    settings = config.get_settings()
    monkeypatch.setattr(config, "get_settings", lambda: settings.model_copy(
        update={"job_resident_dataset_bytes": 0}))
    model_inputs.preprocessed_image_inputs.cache_clear()
    with new_session() as db:
        lazy, *_ = model_inputs.inputs_for(db.get(Model, model["id"]),
                                           db.get(Dataset, dataset["id"]))
    assert type(lazy).__name__ == "LazyInputs"
    assert torch.allclose(lazy[torch.tensor([3, 7])], x_train[[3, 7]], atol=1e-6)
    model_inputs.preprocessed_image_inputs.cache_clear()
    bad = register(sqlite_api, dataset["id"], vit["dir"], "hf-image-classifier",
                   replace={"preprocessor_config": json.dumps(
                       preprocessor | {"image_std": [0.2, 0.0, 0.2]}).encode()},
                   weights=weights)
    assert_problem(bad, 422, "image_std")


def test_deleting_a_text_model_erases_its_tokenizer_unless_another_model_uses_it(sqlite_api,
                                                                                  bert):
    from app.core.storage import get_blob_store

    dataset = upload(sqlite_api, bert["dataset"], **TEXT_COLUMNS)
    first = register(sqlite_api, dataset["id"], bert["dir"], "hf-text-classifier").json()
    second = register(sqlite_api, dataset["id"], bert["dir"], "hf-text-classifier").json()
    tokenizer = first["architecture_config"]["tokenizer_sha256"]
    assert second["architecture_config"]["tokenizer_sha256"] == tokenizer
    store = get_blob_store()
    assert store.path(tokenizer).read_bytes() == (bert["dir"] / "tokenizer.json").read_bytes()
    assert sqlite_api.delete(f"/v1/models/{first['id']}").status_code == 204
    assert store.exists(tokenizer)  # the second model still needs it
    assert sqlite_api.delete(f"/v1/models/{second['id']}").status_code == 204
    assert not store.exists(tokenizer)


def test_the_client_registers_a_model_folder_with_its_files(live_server, vit):
    with live_server.client() as lethe:
        dataset = lethe.datasets.upload(vit["dataset"], name="images")
        model = lethe.models.register(vit["dir"], dataset=dataset.id)
    assert model.name == "model" and model.architecture == "hf-image-classifier"
    assert model.architecture_config["hf_config"]["id2label"] == {"0": "0", "1": "1", "2": "2"}
