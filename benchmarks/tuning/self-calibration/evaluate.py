"""Every core method at its defaults, judged by the acceptance gate, on (dataset, architecture)
pairs the defaults were not tuned on. Not part of the test suite: a record of how the
self-calibrating defaults were chosen and checked (README.md beside it).

    .venv/bin/python benchmarks/tuning/self-calibration/evaluate.py \
        --pairs digits-mlp64,tabular-mlp --scenarios class,random,chain --split validation

Originals, retrain timings and the CIFAR-10 decode are cached under --cache (default
/tmp/selfcal/cache); one JSON line per (pair, split, scenario, seed, method) is appended to
--out.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from worker.engine.architectures import build_model  # noqa: E402
from worker.engine.gate import GateThresholds, judge  # noqa: E402
from worker.engine.methods import METHODS, UnlearningData, UnlearningTask  # noqa: E402
from worker.engine.training import TrainingRecipe, seeded, train  # noqa: E402

CPU = torch.device("cpu")
CORE = ("feature-constraint", "projected-gradient", "deepclean")
DEFAULT_RECIPE = TrainingRecipe()  # what `lethe train` uses when given no recipe
CIFAR_RECIPE = TrainingRecipe(epochs=30, batch_size=128, lr=0.05, augment=True)  # cpu preset's


@dataclass(frozen=True)
class Pair:
    dataset: str
    architecture: str
    config: dict
    recipe: TrainingRecipe


PAIRS = {
    "digits-mlp64": Pair("digits", "mlp", {"hidden": [64, 64]}, DEFAULT_RECIPE),
    "digits-mlp256": Pair("digits", "mlp", {}, DEFAULT_RECIPE),  # lethe train's default widths
    "tabular-mlp": Pair("tabular", "mlp", {"hidden": [128, 64]}, DEFAULT_RECIPE),
    "cifar-smallvgg": Pair("cifar", "smallvgg", {"widths": [16, 32, 64, 128],
                                                 "convs_per_stage": 1, "hidden": 128},
                           CIFAR_RECIPE),
    "cifar-allcnn": Pair("cifar", "allcnn", {"width": 0.25}, CIFAR_RECIPE),
    "cifar-resnet": Pair("cifar", "resnet18", {"width": 8}, CIFAR_RECIPE),
}


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]


def load_split(dataset: str, split: str, cache: Path) -> Split:
    """``split`` 'test': the real test split; 'validation': held-out training rows instead
    (the test split unseen), on which the defaults were chosen."""
    if dataset == "tabular":
        from sklearn.datasets import make_classification
        x, y = make_classification(n_samples=3000, n_features=20, n_informative=10,
                                   n_redundant=4, n_classes=6, n_clusters_per_class=2,
                                   class_sep=1.0, random_state=0)
        x = (x - x.mean(0)) / x.std(0)
        order = np.random.default_rng(0).permutation(len(x))
        train_rows, test_rows = order[:2400], order[2400:]
        if split == "validation":
            train_rows, test_rows = train_rows[:2100], train_rows[2100:]
        return Split(torch.tensor(x[train_rows], dtype=torch.float32),
                     torch.tensor(y[train_rows]), torch.tensor(x[test_rows], dtype=torch.float32),
                     torch.tensor(y[test_rows]), 6, (20,))
    from worker.bench.data import load_subset_arrays, load_validation_arrays, to_bench_data
    from worker.bench.presets import DatasetSpec
    spec = (DatasetSpec("digits") if dataset == "digits"
            else DatasetSpec("cifar10", train_size=2000, test_size=1000))
    if split == "test":
        arrays, name = load_subset_arrays(spec, cache)
    else:
        arrays, name = load_validation_arrays(spec, cache,
                                              "carve" if dataset == "digits" else "unused")
    data = to_bench_data(arrays, name)
    return Split(data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes,
                 tuple(data.input_shape))


def builder(pair: Pair, split: Split):
    config = {"num_classes": split.num_classes, "input_shape": split.input_shape, **pair.config}
    return lambda: build_model(pair.architecture, config)


def trained(pair_name: str, pair: Pair, split: Split, split_name: str, rows: torch.Tensor | None,
            tag: str, seed: int, cache: Path):
    """A model trained with the pair's recipe on ``rows`` (None: every row), cached; and the
    seconds training took (when it was cached: the seconds it took then)."""
    path = cache / "models" / f"{pair_name}-{split_name}-{tag}-{seed}.pt"
    build = builder(pair, split)
    if path.is_file():
        saved = torch.load(path)
        model = build()
        model.load_state_dict(saved["state"])
        return model.eval(), saved["seconds"]
    x, y = (split.x_train, split.y_train) if rows is None else (split.x_train[rows],
                                                               split.y_train[rows])
    started = time.perf_counter()
    with seeded(seed):
        model = build()
        train(model, x, y, pair.recipe.model_copy(update={"seed": seed}), CPU)
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "seconds": seconds}, path)
    return model.eval(), seconds


def request(split: Split, forget: torch.Tensor, classes: list[int] | None,
            gone: torch.Tensor | None = None) -> UnlearningData:
    rows = torch.arange(len(split.y_train))
    settled = forget if gone is None else torch.cat([forget, gone])
    return UnlearningData(split.x_train, split.y_train, split.x_test, split.y_test,
                          forget.sort().values, rows[~torch.isin(rows, settled)],
                          split.num_classes, classes)


def draw(split: Split, scenario: str, seed: int) -> list[tuple[torch.Tensor, list[int] | None]]:
    """The requests of a scenario: one, or two for 'chain' (two classes, one after the other)."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{scenario}:{seed}".encode()))
    n = len(split.y_train)
    if scenario == "random":
        return [(torch.randperm(n, generator=generator)[: round(0.1 * n)].sort().values, None)]
    labels = torch.randperm(split.num_classes, generator=generator)[:2].tolist()
    requests = [(torch.nonzero(split.y_train == label).flatten(), [label]) for label in labels]
    return requests if scenario == "chain" else requests[:1]


def run_method(name: str, base, build, data: UnlearningData, recipe, state, params: dict):
    method = METHODS.get(name)
    task = UnlearningTask(model=base, build_fresh=build, data=data, recipe=recipe, device=CPU,
                          state=state)
    started = time.perf_counter()
    outcome = method().run(task, method.Params(**params))
    return outcome, time.perf_counter() - started


def figures(verdict) -> dict:
    f = verdict.figures
    return {"passed": verdict.passed, "failed": [c.name for c in verdict.failed],
            "failures": verdict.describe_failures() if not verdict.passed else "",
            "forget": f["forget_accuracy"], "retain": f["retain_accuracy"],
            "test": f["test_accuracy"], "base_test": f["base_test_accuracy"],
            "base_retain": f["base_retain_accuracy"], "base_forget": f["base_forget_accuracy"],
            "mia_forget": f.get("mia_forget_nonmember"),
            "mia_held_out": f.get("mia_held_out_nonmember")}


def evaluate(pair_name: str, split_name: str, scenario: str, seed: int, methods: list[str],
             params: dict, cache: Path, out: Path, retrain: bool) -> None:
    pair = PAIRS[pair_name]
    split = load_split(pair.dataset, split_name, cache)
    build = builder(pair, split)
    original, original_seconds = trained(pair_name, pair, split, split_name, None, "original",
                                         seed, cache)
    requests = draw(split, scenario, seed)
    all_forget = torch.cat([rows for rows, _ in requests])
    keep = ~torch.isin(torch.arange(len(split.y_train)), all_forget)
    retrain_rows = torch.nonzero(keep).flatten()
    if retrain:
        retrained, retrain_seconds = trained(pair_name, pair, split, split_name, retrain_rows,
                                             f"retrain-{scenario}", seed, cache)
    else:  # the recipe's epochs over fewer rows: the original's time scaled
        retrained, retrain_seconds = None, original_seconds * len(retrain_rows) / len(keep)
    last = request(split, *requests[-1], gone=None if len(requests) == 1 else requests[0][0])
    rows = []
    if retrained is not None:
        previous = original if len(requests) == 1 else None
        if previous is not None:
            verdict = judge(previous, retrained, last, GateThresholds(), CPU, exact=False)
            rows.append({"method": "retrain", "seconds": retrain_seconds, **figures(verdict)})
    for name in methods:
        base, state, seconds, first = original, None, 0.0, None
        for i, (forget, classes) in enumerate(requests):
            gone = requests[0][0] if i == 1 else None
            data = request(split, forget, classes, gone)
            outcome, took = run_method(name, base, build, data, pair.recipe, state,
                                       params.get(name, {}))
            seconds += took
            verdict = judge(base, outcome.model, data, GateThresholds(), CPU)
            if i == 0 and len(requests) == 2:
                first = figures(verdict)
            base, state = outcome.model, outcome.state
        metrics = outcome.metrics
        rows.append({"method": name, "seconds": seconds, **figures(verdict),
                     "first": first, "stop": metrics.get("stop_reason"),
                     "metrics": {k: v for k, v in metrics.items() if k not in ("history",)}})
    with out.open("a") as file:
        for row in rows:
            record = {"pair": pair_name, "split": split_name, "scenario": scenario,
                      "seed": seed, "retrain_seconds": retrain_seconds,
                      "original_seconds": original_seconds, **row}
            file.write(json.dumps(record, default=str) + "\n")
            flag = "PASS" if row["passed"] else "FAIL"
            print(f"{pair_name:15s} {split_name[:4]} {scenario:6s} s{seed} {row['method']:19s} "
                  f"{flag} f {row['forget']:6.2f} r {row['retain']:6.2f} t {row['test']:6.2f} "
                  f"(base t {row['base_test']:6.2f} r {row['base_retain']:6.2f}) "
                  f"mia {row['mia_forget']}/{row['mia_held_out']} {row['seconds']:6.2f}s "
                  f"/ {retrain_seconds:6.1f}s {row.get('stop') or ''} {row['failures']}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="digits-mlp64")
    parser.add_argument("--scenarios", default="class,random,chain")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default=",".join(CORE))
    parser.add_argument("--params", default="{}", help="JSON: method -> overrides")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/selfcal/cache"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/selfcal/results.jsonl"))
    parser.add_argument("--retrain", action="store_true",
                        help="Train the retrained reference (else its time is estimated).")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs.split(","):
        for scenario in args.scenarios.split(","):
            for seed in map(int, args.seeds.split(",")):
                evaluate(pair, args.split, scenario, seed, args.methods.split(","),
                         json.loads(args.params), args.cache, args.out, args.retrain)


if __name__ == "__main__":
    main()
