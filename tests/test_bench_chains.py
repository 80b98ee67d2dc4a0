"""Replaying fallback chains on a benchmark's per-seed gate verdicts (worker/bench/chains.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from worker.bench.chains import chains_markdown, merged, replay


def _trial(passed: bool, seconds: float, ua: float) -> dict:
    return {"seconds": seconds, "gate": {"verdict": "passed" if passed else "failed"},
            "error": None, "ua": ua, "ra": 99.0, "ta": 90.0, "mia_salun": 50.0}


def _results() -> dict:
    def row(label, trials):
        return {"label": label, "scenario": "random-10", "per_seed": trials}

    return {"pairs": [{"pair": "toy", "rows": [
        row("retrain", [_trial(True, 10.0, 10.0), _trial(True, 10.0, 20.0)]),
        row("fast", [_trial(False, 1.0, 0.0), _trial(True, 1.0, 14.0)]),
        row("slow", [_trial(True, 4.0, 18.0), _trial(False, 4.0, 0.0)]),
    ]}]}


def test_each_trial_pays_every_candidate_tried_and_publishes_the_first_that_passes():
    (outcome,) = replay(_results(), ["fast", "slow", "retrain"], "random-10")
    # Seed 0: fast refused (1 s), slow published (4 s); seed 1: fast published (1 s).
    assert (outcome.first_passed, outcome.approximate, outcome.trials) == (1, 2, 2)
    assert outcome.seconds == pytest.approx((5.0 + 1.0) / 2)
    assert outcome.speedup == pytest.approx(10.0 / 3.0)
    # Published UA 18 and 14 against retrain's 10 and 20: means 16 and 15, other scores equal.
    assert outcome.gap_salun == pytest.approx(1.0 / 4)


def test_a_chain_ending_in_retrain_always_publishes_and_retrain_alone_is_exact():
    (alone,) = replay(_results(), ["retrain"], "random-10")
    assert (alone.approximate, alone.gap_salun, alone.speedup) == (0, 0.0, 1.0)
    (fallen,) = replay(_results(), ["slow", "retrain"], "random-10")
    assert (fallen.first_passed, fallen.approximate) == (1, 1)
    assert fallen.seconds == pytest.approx((4.0 + 14.0) / 2)


def test_a_chain_naming_a_method_the_run_lacks_is_refused():
    with pytest.raises(ValueError, match="no random-10 rows for missing"):
        replay(_results(), ["missing", "retrain"], "random-10")


def test_the_command_writes_a_table_per_scenario(tmp_path):
    from app.cli import cli

    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results()))
    out = tmp_path / "chains.md"
    outcome = CliRunner().invoke(cli, ["bench", "chains", str(results), "--out", str(out),
                                       "--chain", "random-10=fast,slow,retrain"])
    assert outcome.exit_code == 0, outcome.output
    text = out.read_text()
    assert "| fast → slow → retrain | toy | 1/2 | 2/2 | 3.00 | 3.3x | 0.25 |" in text
    assert text == chains_markdown(_results(), {"random-10": [["fast", "slow", "retrain"]],
                                                "class": []}) + "\n"
    bad = CliRunner().invoke(cli, ["bench", "chains", str(results), "--chain", "nope=fast"])
    assert bad.exit_code != 0 and "SCENARIO=METHOD" in bad.output


def test_runs_merge_and_a_tune_run_counts_as_its_method_at_the_chosen_setting():
    results = _results()
    fast_and_retrain = {"pairs": [{"pair": "toy", "rows": results["pairs"][0]["rows"][:2]}]}
    tuned_slow = {"tune": {"method": "slow", "chosen": {"label": "lr=1"}},
                  "pairs": [{"pair": "toy", "rows": [
                      {**results["pairs"][0]["rows"][2], "label": "lr=1"},
                      {**results["pairs"][0]["rows"][1], "label": "lr=2"},  # not chosen
                      # a second retrain row: the first run's is the one kept
                      {**results["pairs"][0]["rows"][0], "per_seed": []}]}]}
    (outcome,) = replay(merged([fast_and_retrain, tuned_slow]), ["fast", "slow", "retrain"],
                        "random-10")
    assert outcome == replay(results, ["fast", "slow", "retrain"], "random-10")[0]
    assert {row["label"] for row in merged([tuned_slow])["pairs"][0]["rows"]} == {
        "slow", "retrain"}
