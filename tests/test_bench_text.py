"""``lethe bench`` on a Hugging Face text classifier: a text table from a CSV, tokenized as
``lethe train`` tokenizes it (a word-level tokenizer built from the training texts), every
contender and the scores (UA, RA, TA, MIA) and the gate run on token batches.

The model is a 2-layer BERT of hidden size 32 built from its config; nothing is downloaded.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tests.hf_fixtures import bert_config, text_csv


def test_lethe_bench_runs_a_text_classifier_on_a_csv(tmp_path):
    from app.cli import cli

    data = text_csv(tmp_path / "texts.csv", per_class_train=80, per_class_test=20)  # 300 rows
    config = tmp_path / "bert.json"
    config.write_text(json.dumps(bert_config(num_labels=2)))  # the bench sets the labels
    result = CliRunner().invoke(cli, [
        "bench", "--dataset", str(data), "--architecture", "hf-text-classifier",
        "--config", str(config), "--text-column", "text", "--split-column", "split",
        "--methods", "retrain,projected-gradient", "--seeds", "0",
        "--scenarios", "random-10,class",
        "--training-config", '{"lr": 0.003, "epochs": 8, "batch_size": 32, '
                             '"warmup_ratio": 0.0}',
        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["architecture"] == "hf-text-classifier"
    assert results["dataset"]["num_train"] == 240 and results["dataset"]["num_test"] == 60
    config_used = results["architecture_config"]
    assert config_used["hf_config"]["id2label"] == {"0": "animal", "1": "colour", "2": "fruit"}
    assert len(config_used["tokenizer_sha256"]) == 64 and config_used["max_length"] == 32
    assert results["recipe"]["lr"] == 0.003 and results["recipe"]["optimizer"] == "adamw"
    original = results["originals"][0]
    assert original["test_accuracy"] > 0.6, original  # it learnt the topics: scores mean something
    rows = {(row["scenario"], row["label"]): row for row in results["rows"]}
    assert set(rows) == {(scenario, label) for scenario in ("random-10", "class")
                         for label in ("retrain", "projected-gradient")}
    for key, row in rows.items():
        assert not row["errors"], (key, row["errors"])
        for score in ("ua", "ra", "ta", "mia"):
            assert math.isfinite(row[score]) and 0 <= row[score] <= 100, (key, score, row)
        verdict = row["per_seed"][0]["gate"]["verdict"]
        assert verdict in ("passed", "failed"), (key, row["per_seed"][0]["gate"])
        assert row["gate_trials"] == 1
    assert all(rows[(scenario, "retrain")]["per_seed"][0]["gate"]["verdict"] == "passed"
               for scenario in ("random-10", "class"))
    assert rows[("class", "retrain")]["ua"] == 100.0  # a retrained model never saw the class
    # A second run finds the original model in the cache: the tokens, hence the key, agree.
    again = CliRunner().invoke(cli, [
        "bench", "--dataset", str(data), "--architecture", "hf-text-classifier",
        "--config", str(config), "--text-column", "text", "--split-column", "split",
        "--methods", "retrain", "--seeds", "0", "--scenarios", "class",
        "--training-config", '{"lr": 0.003, "epochs": 8, "batch_size": 32, '
                             '"warmup_ratio": 0.0}',
        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "again"), "--json"])
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "again" / "results.json").read_text())
    assert rerun["originals"][0]["cache_hit"] and rerun["originals"][0]["key"] == original["key"]


def test_lethe_bench_says_what_a_text_run_is_missing(tmp_path):
    from worker.bench import BenchConfigError
    from worker.bench.runner import run_bench
    from worker.engine.data.tables import TableColumns

    data = text_csv(tmp_path / "texts.csv", per_class_train=4, per_class_test=2)
    columns = TableColumns(text="text", split="split")
    bert = {"hf_config": bert_config()}
    with pytest.raises(BenchConfigError, match="needs --dataset: a text table"):
        run_bench("smoke", tmp_path / "out", architecture="hf-text-classifier",
                  architecture_config=bert, cache_dir=tmp_path / "cache")
    with pytest.raises(BenchConfigError, match="is a text dataset: it needs a text classifier"):
        run_bench("smoke", tmp_path / "out", dataset=data, columns=columns,
                  cache_dir=tmp_path / "cache", show_progress=False)
    with pytest.raises(BenchConfigError, match="--tokenizer goes with a text classifier"):
        run_bench("smoke", tmp_path / "out", dataset=data, columns=columns,
                  tokenizer=data, cache_dir=tmp_path / "cache")
    with pytest.raises(BenchConfigError, match="(?s)texts.csv: .*max_length 64 > the 32 positions"):
        run_bench("smoke", tmp_path / "out", dataset=data, columns=columns,
                  architecture="hf-text-classifier", cache_dir=tmp_path / "cache",
                  architecture_config={**bert, "max_length": 64}, show_progress=False)
