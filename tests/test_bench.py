"""``lethe bench``: the smoke preset end to end, its cache, its outputs, and the pieces."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from app.cli import cli
from worker.bench import BenchConfigError, parse_csv
from worker.bench.cache import ModelCache
from worker.bench.data import BenchData, subset, unused_validation
from worker.bench.presets import DatasetSpec, get_preset
from worker.bench.runner import BenchRunner, plan_contenders, run_bench
from worker.bench.scenarios import draw_forget_set
from worker.bench.scoring import Trial, summarise
from worker.bench.tune import choose, grid_points, run_tune, versus_defaults
from worker.engine.data.arrays import DatasetArrays
from worker.engine.methods import METHODS
from worker.engine.training import TrainingRecipe

FAST_METHODS = ["retrain", "finetune", "deepclean"]
PERCENT_KEYS = ("ua", "ra", "ta", "mia", "avg_gap")
ROW_KEYS = {"scenario", "method", "ua", "ra", "ta", "mia", "avg_gap", "js", "seconds",
            "speedup"} | {f"{key}_std" for key in ("ua", "ra", "ta", "mia", "avg_gap", "js",
                                                   "seconds", "speedup")}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke preset restricted to three fast methods, run once for the module."""
    root = tmp_path_factory.mktemp("bench")
    output = run_bench("smoke", root / "out", methods=FAST_METHODS, cache_dir=root / "cache",
                       show_progress=False)
    return output, root


def rows_by(results: dict) -> dict[tuple[str, str], dict]:
    return {(row["scenario"], row["method"]): row for row in results["rows"]}


@pytest.mark.slow
def test_results_json_has_a_row_per_scenario_and_method(smoke):
    output, _ = smoke
    results = json.loads(output.paths["json"].read_text())
    assert set(results) >= {"preset", "dataset", "architecture", "seeds", "rows"}
    assert results["preset"] == "smoke" and results["seeds"] == [0]
    assert results["architecture"] == "mlp"
    assert len(results["dataset"]["sha256"]) == 64
    rows = rows_by(results)
    assert set(rows) == {(scenario, method) for scenario in ("random-10", "class")
                         for method in FAST_METHODS}
    for row in rows.values():
        assert set(row) >= ROW_KEYS
        assert not row["errors"]
        assert all(0.0 <= row[key] <= 100.0 for key in PERCENT_KEYS)
        assert 0.0 <= row["js"] <= 0.7  # at most ln 2 nats
        assert row["seconds"] > 0 and row["speedup"] > 0


@pytest.mark.slow
def test_retrain_is_the_reference(smoke):
    output, _ = smoke
    rows = rows_by(output.results)
    for scenario in ("random-10", "class"):
        reference = rows[(scenario, "retrain")]
        assert reference["avg_gap"] == 0.0 and reference["speedup"] == 1.0
        assert reference["js"] == 0.0
    # A model retrained without a class cannot recognise it; it still knows the rest.
    assert rows[("class", "retrain")]["ua"] >= 99.0
    assert rows[("class", "retrain")]["ta"] >= 85.0
    assert rows[("random-10", "retrain")]["ra"] >= 95.0


@pytest.mark.slow
def test_markdown_table_and_plot(smoke):
    output, _ = smoke
    text = output.paths["markdown"].read_text()
    assert ("| method | UA | RA | TA | MIA | MIA (SalUn) | Avg. Gap | Avg. Gap (SalUn) | JS | "
            "seconds | speed-up | gate |") in text
    assert "## 10% random forgetting (`random-10`)" in text
    assert "## Class forgetting (`class`)" in text
    assert text.count("| deepclean |") == 3  # both scenarios' tables and the gate's
    assert "## Acceptance gate" in text
    plot = output.paths["plot"]
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(plot) as image:
        image.verify()


@pytest.mark.slow
def test_second_run_reuses_the_cached_original(smoke):
    first, root = smoke
    assert [o["cache_hit"] for o in first.results["originals"]] == [False]
    again = run_bench("smoke", root / "again", methods=["retrain"], scenarios=["class"],
                      cache_dir=root / "cache", show_progress=False)
    original = again.results["originals"][0]
    assert original["cache_hit"] is True
    assert original["key"] == first.results["originals"][0]["key"]
    # The same original model and forget set give the same retrained reference.
    assert rows_by(again.results)[("class", "retrain")]["ua"] == \
        rows_by(first.results)[("class", "retrain")]["ua"]


@pytest.mark.slow
def test_a_pinned_set_of_originals_is_kept_and_read_before_the_cache(smoke, tmp_path):
    first, root = smoke
    key = first.results["originals"][0]["key"]
    pinned = tmp_path / "originals"
    # Found only in the cache: copied into the pinned set, so the set holds what a run used.
    kept = run_bench("smoke", tmp_path / "kept", methods=["retrain"], scenarios=["class"],
                     cache_dir=root / "cache", originals=pinned, show_progress=False)
    assert (pinned / f"{key}.safetensors").is_file()
    assert kept.results["originals"][0]["pinned"] is False
    # Another machine, an empty cache: starts from the pinned weights, trains nothing.
    elsewhere = run_bench("smoke", tmp_path / "elsewhere", methods=["retrain"],
                          scenarios=["class"], cache_dir=tmp_path / "empty-cache",
                          originals=pinned, show_progress=False)
    original = elsewhere.results["originals"][0]
    assert original["pinned"] is True and original["cache_hit"] is True
    assert original["test_accuracy"] == first.results["originals"][0]["test_accuracy"]
    assert not (tmp_path / "empty-cache" / "models").exists()
    assert "(from the pinned set)" in elsewhere.paths["markdown"].read_text()


def test_models_trained_with_a_pinned_set_are_kept_there(tmp_path):
    cache = ModelCache(tmp_path / "cache", tmp_path / "pinned")
    model = torch.nn.Linear(3, 2)
    cache.save("k", model, {"test_accuracy": 0.5})
    assert cache.locate("k") == tmp_path / "pinned" / "k.safetensors"
    assert not (tmp_path / "cache" / "models").exists()
    fresh = torch.nn.Linear(3, 2)
    assert cache.load("k", fresh) == {"test_accuracy": 0.5}
    assert torch.equal(fresh.weight, model.weight)
    assert cache.load("missing", fresh) is None


@pytest.mark.slow
def test_tune_sweeps_on_a_validation_split(smoke, tmp_path):
    _, root = smoke
    output = run_tune("smoke", "finetune", {"epochs": [1, 3]}, tmp_path, scenarios=["class"],
                      cache_dir=root / "cache", min_speedup=1.0, show_progress=False)
    results = output.results
    assert results["dataset"]["test_split"] == "validation"
    assert results["dataset"]["num_train"] + results["dataset"]["num_test"] == 1437
    assert [row["label"] for row in results["rows"]] == ["retrain", "epochs=1", "epochs=3"]
    assert results["tune"]["chosen"]["params"] in ({"epochs": 1}, {"epochs": 3})
    # finetune's default is 3 epochs: the other setting is compared with it, seed by seed.
    assert results["tune"]["versus_defaults"]["defaults"] == "epochs=3"
    assert list(results["tune"]["versus_defaults"]["points"]) == ["epochs=1"]
    text = output.paths["markdown"].read_text()
    assert text.count("## Chosen values for `finetune`") == 1
    assert "Against the current defaults (`epochs=3`)" in text


@pytest.mark.slow
def test_a_diverging_method_becomes_a_failed_row(smoke, tmp_path, monkeypatch):
    _, root = smoke
    finetune = METHODS.get("finetune")
    run = finetune.run

    def diverge(self, task, params):
        outcome = run(self, task, params)
        with torch.no_grad():
            outcome.model.classifier.weight.fill_(float("nan"))
        return outcome

    monkeypatch.setattr(finetune, "run", diverge)
    output = run_bench("smoke", tmp_path, methods=["finetune"], scenarios=["class"],
                       cache_dir=root / "cache", show_progress=False)
    failed = rows_by(output.results)[("class", "finetune")]
    assert failed["avg_gap"] is None and "NaN" in failed["errors"][0]
    assert "| finetune | failed |" in output.paths["markdown"].read_text()


@pytest.mark.slow
def test_every_method_runs_on_the_gpu_presets_architecture(tmp_path):
    # The gpu preset (ResNet-18) has no GPU to run on in CI: its architecture, narrowed, on
    # small random images, through every method and both scenarios, is what can be checked.
    # One thread: on two busy cores, tiny models run many times slower on two (presets.py).
    preset = replace(get_preset("gpu"), architecture_config={"width": 4},
                     recipe=TrainingRecipe(epochs=2, batch_size=32, lr=0.05), torch_threads=1)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(240, 3, 16, 16, generator=generator)
    labels = torch.arange(240) % 4
    data = BenchData(name="random", sha256="0" * 64, classes=list("abcd"),
                     input_shape=(3, 16, 16), x_train=images[:200], y_train=labels[:200],
                     x_test=images[200:], y_test=labels[200:])
    runner = BenchRunner(preset, data, ModelCache(tmp_path), device=torch.device("cpu"))
    contenders = plan_contenders(preset, None)
    trials = runner.run(contenders, ("random-10", "class"), (0,), show_progress=False)
    assert {trial.method for trial in trials} == set(METHODS.names())
    assert len(trials) == 2 * len(contenders)
    for trial in trials:
        assert trial.error is None, (trial.scenario, trial.method, trial.error)
        assert all(0.0 <= value <= 100.0 for value in trial.scores.values())


def test_cli_rejects_unknown_names(tmp_path):
    runner = CliRunner()
    for args in (["--methods", "retrain,nope"], ["--scenarios", "half"], ["--preset", "huge"],
                 ["--seeds", "one"], ["--tune", "deepclean"]):
        result = runner.invoke(cli, ["bench", "--out", str(tmp_path), *args])
        assert result.exit_code == 2, args
    assert not any(tmp_path.iterdir())


def test_unused_validation_needs_a_preset_that_leaves_rows_out(tmp_path):
    # The smoke preset trains on every digits row: nothing is left to validate on.
    with pytest.raises(BenchConfigError, match="use carve"):
        run_tune("smoke", "finetune", {"epochs": [1]}, tmp_path, validation="unused",
                 cache_dir=tmp_path / "cache", show_progress=False)
    result = CliRunner().invoke(cli, ["bench", "--out", str(tmp_path), "--validation", "unused"])
    assert result.exit_code == 2 and "--tune" in result.output
    assert not (tmp_path / "results.json").exists()


# --- The pieces ----------------------------------------------------------------------------

def tiny_data(labels: list[int]) -> BenchData:
    y = torch.tensor(labels)
    return BenchData("tiny", "0" * 64, ["a", "b", "c"], (2,), torch.zeros(len(y), 2), y,
                     torch.zeros(3, 2), torch.tensor([0, 1, 2]))


def test_forget_sets_are_deterministic_per_seed():
    data = tiny_data([0, 1, 2] * 40)
    first = draw_forget_set("random-10", data, seed=0)
    assert torch.equal(first.forget_idx, draw_forget_set("random-10", data, seed=0).forget_idx)
    assert not torch.equal(first.forget_idx, draw_forget_set("random-10", data, 1).forget_idx)
    assert len(first.forget_idx) == 12 and first.forget_classes is None
    whole_class = draw_forget_set("class", data, seed=0)
    (label,) = whole_class.forget_classes
    assert torch.equal(whole_class.forget_idx, torch.nonzero(data.y_train == label).flatten())


def test_unused_validation_trains_on_the_presets_rows_and_validates_on_others():
    labels = torch.arange(3).repeat(100)
    # Every row distinct and traceable: row i holds the value i.
    arrays = DatasetArrays(
        x_train=torch.arange(300, dtype=torch.float32)[:, None].numpy(),
        y_train=labels.numpy(), x_test=torch.zeros(30, 1).numpy(),
        y_test=torch.arange(3).repeat(10).numpy(), ids_train=[f"s{i}" for i in range(300)],
        classes=["a", "b", "c"])
    spec = DatasetSpec("file", train_size=120, test_size=30)
    validation = unused_validation(arrays, spec)
    preset_train = subset(arrays, spec.train_size, spec.test_size)
    # The models train on exactly the rows the preset's own runs train on...
    assert (validation.x_train == preset_train.x_train).all()
    assert validation.ids_train == preset_train.ids_train
    # ... and validate on as many training rows as the test subset has, none of them seen.
    train_values, held_out_values = set(validation.x_train[:, 0]), set(validation.x_test[:, 0])
    assert len(held_out_values) == 30 and not train_values & held_out_values
    assert (validation.y_test == validation.x_test[:, 0].astype(int) % 3).all()
    assert sorted(torch.bincount(torch.from_numpy(validation.y_test)).tolist()) == [10, 10, 10]
    with pytest.raises(BenchConfigError, match="too few"):
        unused_validation(arrays, DatasetSpec("file", train_size=290, test_size=30))


def trial(label: str, seed: int, seconds: float, ua: float, js: float = 0.1) -> Trial:
    scores = {"ua": ua, "ra": 100.0, "ta": 90.0, "mia": 10.0}
    return Trial(seed, "class", label, label, {}, seconds=seconds, scores=scores, js=js)


def test_gaps_and_speedups_are_per_seed_then_averaged():
    trials = [trial("retrain", 0, 10.0, ua=5.0, js=0.0), trial("fast", 0, 1.0, ua=9.0),
              trial("retrain", 1, 20.0, ua=7.0, js=0.0), trial("fast", 1, 5.0, ua=7.0),
              Trial(0, "class", "broken", "broken", {}, error="ValueError: no"),
              Trial(1, "class", "broken", "broken", {}, error="ValueError: no")]
    reference, fast, broken = summarise(trials, "retrain")
    assert reference["avg_gap"] == 0.0 and reference["speedup"] == 1.0
    assert fast["avg_gap"] == 0.5  # seed 0: |9 - 5| / 4 = 1; seed 1: 0
    assert fast["speedup"] == 7.0  # (10 + 4) / 2
    assert fast["ua"] == 8.0 and fast["ua_std"] == pytest.approx(1.4142, abs=1e-4)
    assert broken["avg_gap"] is None and len(broken["errors"]) == 2


def test_grid_points_and_choice():
    points = grid_points({"lr": [0.1, 0.01], "epochs": [1]})
    assert points == [{"lr": 0.1, "epochs": 1}, {"lr": 0.01, "epochs": 1}]
    with pytest.raises(BenchConfigError):
        grid_points({"lr": []})
    rows = [{"label": "slow", "scenario": "class", "avg_gap": 0.1, "speedup": 2.0},
            {"label": "fast", "scenario": "class", "avg_gap": 1.0, "speedup": 20.0}]
    labelled = {"slow": {"lr": 0.1}, "fast": {"lr": 0.01}}
    assert choose(rows, labelled, min_speedup=10.0)["params"] == {"lr": 0.01}
    best = choose(rows, labelled, min_speedup=50.0)
    assert best["params"] == {"lr": 0.1} and best["met_min_speedup"] is False


def test_settings_are_compared_with_the_defaults_seed_by_seed():
    def row(label, scenario, gaps):
        return {"label": label, "scenario": scenario,
                "per_seed": [{"seed": seed, "avg_gap": gap} if gap is not None
                             else {"seed": seed, "error": "diverged"}
                             for seed, gap in enumerate(gaps)]}

    rows = [row("lr=0.1", "random-10", [4.0, 2.0, 3.0, 1.0]),
            row("lr=0.1", "class", [2.0, 2.0, 1.0, 1.0]),
            row("lr=0.01", "random-10", [2.0, 3.0, 1.0, None]),
            row("lr=0.01", "class", [2.0, 1.0, 1.0, 1.0])]
    labelled = {"lr=0.1": {"lr": 0.1}, "lr=0.01": {"lr": 0.01}}
    comparison = versus_defaults(rows, labelled, {"lr": 0.1, "epochs": 3})
    assert comparison["defaults"] == "lr=0.1"
    point = comparison["points"]["lr=0.01"]
    # Per seed, over scenarios: defaults 3, 2, 2; the setting 2, 2, 1 (seed 3 failed).
    assert point["seeds"] == 3 and point["better_on"] == 2
    assert point["gap_change"] == pytest.approx(-2 / 3, abs=1e-4)
    assert point["standard_error"] == pytest.approx((1 / 3) ** 0.5 / 3 ** 0.5, abs=1e-4)
    assert versus_defaults(rows, labelled, {"lr": 0.5}) is None


def test_parse_csv():
    assert parse_csv(None) is None
    assert parse_csv("retrain, deepclean,") == ["retrain", "deepclean"]
    assert parse_csv("0,2", int) == [0, 2]
    with pytest.raises(BenchConfigError):
        parse_csv("0,two", int)
