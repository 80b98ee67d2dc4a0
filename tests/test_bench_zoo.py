"""The bench measured as the field measures: SalUn's MIA and Avg. Gap, labelled paper rows, the
acceptance gate per trial, and suites of (dataset, architecture) pairs such as ``zoo``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from worker.bench import BenchConfigError
from worker.bench import presets as presets_module
from worker.bench.cache import ModelCache
from worker.bench.data import BenchData
from worker.bench.presets import (
    CIFAR10,
    DIGITS,
    SYNTHETIC,
    DatasetSpec,
    Preset,
    PresetSuite,
    Variant,
    get_preset,
    get_suite,
)
from worker.bench.report import write_report
from worker.bench.runner import BenchRunner, plan_contenders, run_bench
from worker.bench.scoring import Trial, gap_between_means, summarise
from worker.bench.tune import leave_one_pair_out, run_tune
from worker.engine.architectures import build_model
from worker.engine.methods import UnlearningData
from worker.engine.metrics import (
    evaluate,
    evaluate_with_salun_mia,
    salun_mia_efficacy,
    salun_mia_efficacy_from_logits,
)
from worker.engine.training import TrainingRecipe

CPU = torch.device("cpu")


# --- SalUn's membership attack -------------------------------------------------------------

def logits_with_confidence(confidence: torch.Tensor, num_classes: int = 2) -> tuple:
    """Two-class logits whose true class (0) has the given softmax probability."""
    logit = torch.log(confidence / (1 - confidence))
    logits = torch.stack([logit, torch.zeros_like(logit)], dim=1)
    return logits, torch.zeros(len(confidence), dtype=torch.long)


def spread(low: float, high: float, n: int, seed: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=torch.Generator().manual_seed(seed))


def test_salun_mia_calls_confident_rows_members_and_unsure_ones_non_members():
    members = logits_with_confidence(spread(0.95, 0.999, 2_000, 0))
    non_members = logits_with_confidence(spread(0.3, 0.7, 500, 1))
    # A forget set a quarter of whose rows look like training rows.
    forget = logits_with_confidence(torch.cat([spread(0.95, 0.999, 100, 2),
                                               spread(0.3, 0.7, 300, 3)]))
    efficacy = salun_mia_efficacy_from_logits(members, non_members, forget, seed=0)
    assert efficacy == pytest.approx(0.75, abs=0.02)
    assert efficacy == salun_mia_efficacy_from_logits(members, non_members, forget, seed=0)
    # Every row of a forgotten model's D_f unsure: every one a non-member.
    unsure = logits_with_confidence(spread(0.35, 0.65, 50, 4))
    assert salun_mia_efficacy_from_logits(members, non_members, unsure, seed=0) == 1.0
    empty = logits_with_confidence(torch.empty(0))
    assert salun_mia_efficacy_from_logits(members, non_members, empty, seed=0) is None


def test_salun_mia_draws_as_many_members_as_non_members_from_the_seed():
    # Members and non-members overlap, so which members are drawn moves the boundary.
    members = logits_with_confidence(spread(0.5, 0.999, 3_000, 5))
    non_members = logits_with_confidence(spread(0.3, 0.9, 300, 6))
    forget = logits_with_confidence(spread(0.3, 0.999, 400, 7))
    by_seed = [salun_mia_efficacy_from_logits(members, non_members, forget, seed=seed)
               for seed in range(4)]
    assert by_seed == [salun_mia_efficacy_from_logits(members, non_members, forget, seed=seed)
                       for seed in range(4)]
    assert len(set(by_seed)) > 1
    # Capped rows are a seeded sample too: still deterministic, still a share.
    capped = salun_mia_efficacy_from_logits(members, non_members, forget, seed=0, max_rows=100)
    assert capped == salun_mia_efficacy_from_logits(members, non_members, forget, seed=0,
                                                    max_rows=100)
    assert 0.0 <= capped <= 1.0


def test_one_prediction_gives_evaluates_figures_and_salun_mia():
    torch.manual_seed(0)
    model = build_model("mlp", {"num_classes": 3, "input_shape": (6,), "hidden": [8]})
    x, y = torch.randn(300, 6), torch.arange(300) % 3
    data = UnlearningData(x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:],
                          forget_idx=torch.arange(0, 240, 8),
                          retain_idx=torch.tensor([i for i in range(240) if i % 8]),
                          num_classes=3)
    both = evaluate_with_salun_mia(model, data, CPU, seed=3)
    assert {key: both[key] for key in evaluate(model, data, CPU, seed=3)} == \
        evaluate(model, data, CPU, seed=3)
    # Every row fits under the cap, so both ways draw the same members.
    assert both["salun_mia_efficacy"] == salun_mia_efficacy(model, data, CPU, seed=3)


# --- The two Avg. Gap conventions ----------------------------------------------------------

def scored_trial(label: str, seed: int, ua: float, mia_salun: float | None = 10.0) -> Trial:
    scores = {"ua": ua, "ra": 100.0, "ta": 90.0, "mia": 10.0}
    if mia_salun is not None:
        scores["mia_salun"] = mia_salun
    return Trial(seed, "random-10", label, label, {}, seconds=1.0, scores=scores, js=0.0)


def test_salun_gap_is_between_means_while_lethes_averages_per_seed_gaps():
    # Seed 0 overshoots retrain's UA by 4, seed 1 undershoots it by 4: per seed both are 1
    # point off on average; between the means over seeds nothing is off.
    trials = [scored_trial("retrain", 0, ua=5.0), scored_trial("method", 0, ua=9.0),
              scored_trial("retrain", 1, ua=5.0), scored_trial("method", 1, ua=1.0)]
    reference, method = summarise(trials, "retrain")
    assert method["avg_gap"] == 1.0 and method["avg_gap_salun"] == 0.0
    assert reference["avg_gap"] == 0.0 and reference["avg_gap_salun"] == 0.0
    # SalUn's gap uses SalUn's MIA: a difference there shows in it alone.
    assert gap_between_means([{"ua": 1, "ra": 2, "ta": 3, "mia": 0, "mia_salun": 8}],
                             [{"ua": 1, "ra": 2, "ta": 3, "mia": 4, "mia_salun": 4}]) == 1.0
    # Without SalUn's MIA (results from before it was measured) there is no such gap.
    old = [scored_trial("retrain", 0, ua=5.0, mia_salun=None),
           scored_trial("method", 0, ua=9.0, mia_salun=None)]
    assert summarise(old, "retrain")[1]["avg_gap_salun"] is None


def test_salun_gap_pairs_the_seeds_where_both_finished():
    trials = [scored_trial("retrain", 0, ua=5.0), scored_trial("method", 0, ua=6.0),
              scored_trial("retrain", 1, ua=25.0),
              Trial(1, "random-10", "method", "method", {}, error="ValueError: no")]
    method = summarise(trials, "retrain")[1]
    assert method["avg_gap_salun"] == 0.25  # seed 0 only: |6 - 5| / 4


# --- Labelled contenders -------------------------------------------------------------------

def test_a_method_runs_under_several_labels_with_per_scenario_params():
    contenders = {c.label: c for c in plan_contenders(get_preset("cpu"), None)}
    default, paper = contenders["projected-gradient"], contenders["projected-gradient (paper)"]
    assert default.method == paper.method == "projected-gradient"
    assert default.params == {} and paper.params["lr_start"] == 0.05
    assert paper.params_for("random-10")["bisect_steps"] == 0
    official = contenders["ssd (official)"]
    assert official.params_for("random-10")["batch_size"] == 128
    assert official.params_for("class")["batch_size"] == 64
    assert official.params_for("class")["alpha"] == 10.0
    assert list(contenders)[0] == "retrain"
    # Named one by one: a variant by its label, a method by its name.
    chosen = plan_contenders(get_preset("cpu"), ["ssd (official)", "finetune"])
    assert [c.label for c in chosen] == ["retrain", "ssd (official)", "finetune"]
    with pytest.raises(BenchConfigError, match="unknown method"):
        plan_contenders(get_preset("cpu"), ["ssd (paper)"])
    bad = replace(get_preset("smoke"), variants=(Variant("x", "ssd", {"alpha": -1}),))
    with pytest.raises(ValueError):
        plan_contenders(bad, None)


def random_images(rows: int = 160, classes: int = 4) -> BenchData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows + 40, 12, generator=generator)
    y = torch.arange(rows + 40) % classes
    x[torch.arange(rows + 40), y] += 2.0  # learnable: the label's feature stands out
    return BenchData(name="tiny", sha256="1" * 64, classes=[str(c) for c in range(classes)],
                     input_shape=(12,), x_train=x[:rows], y_train=y[:rows], x_test=x[rows:],
                     y_test=y[rows:])


TINY = Preset(name="tiny", description="tiny", dataset=DatasetSpec("file"), architecture="mlp",
              architecture_config={"hidden": [16]},
              recipe=TrainingRecipe(epochs=5, batch_size=32, lr=0.1), seeds=(0,),
              variants=(Variant("finetune (1 epoch)", "finetune", {"epochs": 1},
                                scenario_params={"class": {"epochs": 2}}),),
              methods=("retrain", "finetune", "ssd"), torch_threads=1)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    runner = BenchRunner(TINY, random_images(), ModelCache(root), device=CPU)
    contenders = plan_contenders(TINY, None)
    trials = runner.run(contenders, ("random-10", "class"), (0,), show_progress=False)
    results = runner.results(trials, ("random-10", "class"), (0,))
    return trials, results, write_report(results, root / "out")


def test_duplicate_method_rows_stay_apart(tiny_results):
    trials, results, _ = tiny_results
    rows = {(row["scenario"], row["label"]): row for row in results["rows"]}
    assert {label for _, label in rows} == {"retrain", "finetune", "ssd", "finetune (1 epoch)"}
    assert rows[("random-10", "finetune (1 epoch)")]["method"] == "finetune"
    assert rows[("random-10", "finetune (1 epoch)")]["params"]["epochs"] == 1
    assert rows[("class", "finetune (1 epoch)")]["params"]["epochs"] == 2
    assert rows[("random-10", "finetune")]["params"]["epochs"] != 1
    assert all(trial.error is None for trial in trials)
    assert all("mia_salun" in trial.scores for trial in trials)


def test_every_trial_carries_the_gates_verdict(tiny_results):
    trials, results, paths = tiny_results
    for trial in trials:
        assert trial.gate["verdict"] in ("passed", "failed"), trial.gate
        assert trial.gate["exact"] is (trial.method == "retrain")
    rows = {(row["scenario"], row["label"]): row for row in results["rows"]}
    assert rows[("class", "retrain")]["gate_pass_rate"] == 1.0
    for row in rows.values():
        assert row["gate_trials"] == 1 and row["per_seed"][0]["gate"]["criteria"]
    assert results["gate"]["retrain"] == {"method": "retrain", "passed": 2, "trials": 2,
                                          "per_scenario": {"random-10": 1.0, "class": 1.0},
                                          "pass_rate": 1.0}
    assert rows[("class", "ssd")]["weights_dampened"][0] >= 0
    saved = json.loads(paths["json"].read_text())
    assert saved["rows"][0]["per_seed"][0]["gate"]["verdict"] == "passed"
    text = paths["markdown"].read_text()
    assert "| retrain | 100% | 100% | 100% (2/2) |" in text
    assert "| method | UA | RA | TA | MIA | MIA (SalUn) | Avg. Gap | Avg. Gap (SalUn) |" in text
    assert "- ssd: weights dampened per seed" in text
    assert "Avg. Gap (SalUn): SalUn's convention" in text


def test_a_method_that_raises_counts_as_not_published():
    broken = Trial(0, "class", "broken", "broken", {}, error="ValueError: no")
    fine = Trial(0, "class", "retrain", "retrain", {}, seconds=1.0,
                 scores={"ua": 1.0, "ra": 1.0, "ta": 1.0, "mia": 1.0},
                 gate={"verdict": "passed"})
    _, row = summarise([fine, broken], "retrain")
    assert (row["gate_passed"], row["gate_trials"], row["gate_pass_rate"]) == (0, 1, 0.0)


# --- Suites of pairs -----------------------------------------------------------------------

def test_zoo_covers_datasets_architectures_and_both_scenarios():
    zoo = get_suite("zoo")
    assert len(zoo.pairs) >= 4
    assert len({pair.dataset.source for pair in zoo.pairs}) >= 2
    assert {pair.dataset.source for pair in zoo.pairs} >= {DIGITS, SYNTHETIC, CIFAR10}
    assert len({pair.architecture for pair in zoo.pairs}) >= 3
    assert len({pair.name for pair in zoo.pairs}) == len(zoo.pairs)
    for pair in zoo.pairs:
        assert pair.scenarios == ("random-10", "class") and len(pair.seeds) == 3
        assert pair.torch_threads == 1
        labels = [c.label for c in plan_contenders(pair, None)]
        assert {"retrain", "feature-constraint", "projected-gradient", "deepclean",
                "projected-gradient (paper)", "ssd (official)"} <= set(labels)
    allcnn = next(pair for pair in zoo.pairs if pair.architecture == "allcnn")
    paper = next(v for v in allcnn.variants if v.label == "projected-gradient (paper)")
    assert paper.params["gamma"] == 0.9  # the paper's γ for All-CNN-like nets
    # A one-pair preset is a suite of one; --dataset cannot stand in for several pairs.
    assert get_suite("smoke").pairs == (get_preset("smoke"),)
    with pytest.raises(BenchConfigError, match="suite"):
        get_preset("zoo")
    with pytest.raises(BenchConfigError, match="pairs"):
        run_bench("zoo", dataset="x.npz")


def test_a_suite_reports_each_pair_and_the_mean_over_pairs(tmp_path, monkeypatch):
    recipe = TrainingRecipe(epochs=3, batch_size=64, lr=0.05)
    pairs = tuple(Preset(name=name, description=name, dataset=DatasetSpec(DIGITS),
                         architecture="mlp", architecture_config={"hidden": hidden},
                         recipe=recipe, seeds=(0,), methods=("retrain", "finetune"),
                         torch_threads=1)
                  for name, hidden in (("narrow", [16]), ("wide", [48])))
    monkeypatch.setitem(presets_module.SUITES, "duo", PresetSuite("duo", "two MLPs", pairs))
    output = run_bench("duo", tmp_path / "out", scenarios=["class"],
                       cache_dir=tmp_path / "cache", show_progress=False)
    results = output.results
    assert [pair["pair"] for pair in results["pairs"]] == ["narrow", "wide"]
    overall = {row["label"]: row for row in results["rows"]}
    per_pair = [{row["label"]: row for row in pair["rows"]} for pair in results["pairs"]]
    assert overall["finetune"]["pairs"] == ["narrow", "wide"]
    assert overall["finetune"]["ua"] == pytest.approx(
        (per_pair[0]["finetune"]["ua"] + per_pair[1]["finetune"]["ua"]) / 2, abs=1e-3)
    assert overall["retrain"]["gate_trials"] == 2
    text = output.paths["markdown"].read_text()
    assert "## Overall: mean over 2 pairs" in text
    assert "## Pair `narrow`" in text and "## Pair `wide`" in text
    assert text.count("### Acceptance gate") == 3
    assert output.paths["plot narrow"].is_file() and output.paths["plot"].is_file()


# --- Leave one pair out --------------------------------------------------------------------

def tune_rows(gaps: dict[str, float]) -> list[dict]:
    return [{"label": label, "scenario": "class", "avg_gap": gap, "speedup": 20.0,
             "per_seed": [{"seed": 0, "avg_gap": gap}]} for label, gap in gaps.items()]


def test_each_pair_is_judged_by_the_setting_chosen_on_the_others():
    labelled = {"lr=0.1": {"lr": 0.1}, "lr=0.01": {"lr": 0.01}}
    pairs = [{"pair": "a", "rows": tune_rows({"lr=0.1": 1.0, "lr=0.01": 3.0})},
             {"pair": "b", "rows": tune_rows({"lr=0.1": 2.0, "lr=0.01": 1.0})},
             {"pair": "c", "rows": tune_rows({"lr=0.1": 1.0, "lr=0.01": 5.0})}]
    result = leave_one_pair_out(pairs, labelled, min_speedup=10.0, defaults={"lr": 0.01})
    # Without a: b and c favour 0.1 (mean 1.5 against 3.0); a scores 1.0 with it.
    assert result["pairs"]["a"] == {"chosen_elsewhere": "lr=0.1", "gap_here": 1.0,
                                    "best_here": "lr=0.1", "best_gap_here": 1.0,
                                    "defaults_gap_here": 3.0}
    # Without b: 0.1 again (1.0 against 4.0), though b itself prefers 0.01.
    assert result["pairs"]["b"]["chosen_elsewhere"] == "lr=0.1"
    assert result["pairs"]["b"]["gap_here"] == 2.0 and result["pairs"]["b"]["best_gap_here"] == 1.0
    assert result["defaults"] == "lr=0.01"
    assert result["mean_held_out_gap"] == pytest.approx(4 / 3, abs=1e-4)
    assert result["mean_defaults_gap"] == pytest.approx(3.0)


def test_tuning_a_suite_reports_leave_one_pair_out(tmp_path, monkeypatch):
    recipe = TrainingRecipe(epochs=3, batch_size=64, lr=0.05)
    pairs = tuple(Preset(name=name, description=name, dataset=DatasetSpec(DIGITS),
                         architecture="mlp", architecture_config={"hidden": hidden},
                         recipe=recipe, seeds=(0,), torch_threads=1)
                  for name, hidden in (("narrow", [16]), ("wide", [48])))
    monkeypatch.setitem(presets_module.SUITES, "duo", PresetSuite("duo", "two MLPs", pairs))
    output = run_tune("duo", "finetune", {"epochs": [1, 3]}, tmp_path, scenarios=["class"],
                      cache_dir=tmp_path / "cache", min_speedup=1.0, show_progress=False)
    # Two pairs at once, each swept in its own process: the same sweep, in the same order.
    parallel = run_tune("duo", "finetune", {"epochs": [1, 3]}, tmp_path / "parallel",
                        scenarios=["class"], cache_dir=tmp_path / "cache", min_speedup=1.0,
                        show_progress=False, workers=2)
    assert [pair["pair"] for pair in parallel.results["pairs"]] == ["narrow", "wide"]
    assert ({row["label"]: row["avg_gap"] for row in parallel.results["rows"]}
            == {row["label"]: row["avg_gap"] for row in output.results["rows"]})
    held_out = output.results["tune"]["leave_one_pair_out"]
    assert set(held_out["pairs"]) == {"narrow", "wide"}
    assert held_out["defaults"] == "epochs=3"
    for entry in held_out["pairs"].values():
        assert entry["chosen_elsewhere"] in ("epochs=1", "epochs=3")
        assert entry["gap_here"] is not None
    assert all(pair["dataset"]["test_split"] == "validation"
               for pair in output.results["pairs"])
    text = output.paths["markdown"].read_text()
    assert "# Lethe tuning `finetune`: preset `duo`" in text
    assert "## Leave one pair out" in text and "| narrow | epochs=" in text


def test_the_cli_knows_the_zoo(tmp_path):
    from typer.testing import CliRunner

    from app.cli import cli

    runner = CliRunner()
    unknown = runner.invoke(cli, ["bench", "--preset", "zoo", "--methods", "nope",
                                  "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "nope" in unknown.output
    several = runner.invoke(cli, ["bench", "--preset", "zoo", "--dataset", __file__,
                                  "--out", str(tmp_path)])
    assert several.exit_code == 2 and "pairs" in several.output
    assert not any(tmp_path.iterdir())
