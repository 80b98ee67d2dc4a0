"""Diagnosis, not tuning: run one method on a zoo pair's original models and print how its loop
went (stop reason, undone rounds, the monitor's figures round by round with ``-v``), its
figures on the test split and the acceptance gate's verdict. It reads the test split, so what
it shows may explain a failure but must not choose a default (the `--tune` sweeps do that, on
validation rows). See README.md here for what it was used for.

    python benchmarks/tuning/feature-constraint/cnn-classes/diagnose.py \
        cifar10-resnet18 0,1,2 class feature-constraint '{}' -v
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from worker.bench.cache import ModelCache
from worker.bench.data import load_bench_data
from worker.bench.presets import default_cache_dir, get_suite
from worker.bench.runner import BenchRunner, Setting, contender
from worker.bench.scenarios import draw_forget_set, unlearning_data

# The zoo's pinned original models, so a diagnosis sees the committed run's models.
PINNED = Path(__file__).resolve().parents[3] / "zoo" / "originals"


def rounded(entry: dict) -> dict:
    return {key: round(value, 3) if isinstance(value, float) else value
            for key, value in entry.items()}


def main(pair: str, seeds: str, scenario: str, method: str, params: str = "{}",
         verbose: bool = False) -> None:
    preset = next(p for p in get_suite("zoo").pairs if p.name == pair)
    cache = default_cache_dir()
    data = load_bench_data(preset.dataset, cache, dict(preset.architecture_config))
    runner = BenchRunner(preset, data, ModelCache(cache, PINNED))
    torch.set_num_threads(preset.torch_threads or 1)
    entrant = contender(method, json.loads(params))
    for seed in (int(s) for s in seeds.split(",")):
        original = runner.original(seed)
        forget = draw_forget_set(scenario, data, seed)
        setting = Setting(seed, scenario, unlearning_data(data, forget))
        trial, _ = runner._trial(original, setting, entrant)
        metrics, gate = trial.metrics or {}, trial.gate or {}
        print(f"== {pair} seed {seed} {scenario} {method} {params}: {trial.seconds:.1f} s"
              + (f" error {trial.error}" if trial.error else ""))
        print("  metrics", {k: v for k, v in metrics.items() if k not in ("history", "start")})
        if verbose:
            for entry in [metrics.get("start", {}), *metrics.get("history", [])]:
                print("   ", rounded(entry))
        print("  test split", rounded(trial.scores or {}))
        print("  gate", gate.get("verdict"),
              [(c.get("name"), c.get("passed"), c.get("value"))
               for c in gate.get("criteria", [])])


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "-v"]
    main(*arguments, verbose="-v" in sys.argv)
