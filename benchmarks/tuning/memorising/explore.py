"""Exploration, not a method: can a utility-controlled forgetting phase make a memorising model
forget scattered samples? Runs one phase on a zoo pair's original model and prints what the
acceptance gate makes of the result. See README.md here for why and what it found.

    python benchmarks/tuning/memorising/explore.py synthetic-mlp 0,1,2 relabel \
        '{"retain_ratio": 9}'
    python benchmarks/tuning/memorising/explore.py synthetic-mlp 0,1,2 neighbours \
        '{"space": "features"}'
    python benchmarks/tuning/memorising/explore.py cifar10-resnet18 0 agreement
    python benchmarks/tuning/memorising/explore.py synthetic-mlp 0,1,2 margin-auc
    python benchmarks/tuning/memorising/explore.py synthetic-mlp 0,1,2 margin \
        '{"flip": "runner-up", "retain_ratio": 1}'

Both phases use the core methods' own loops (worker/engine/methods/_monitor.py): ``descend``
towards the random-forgetting level, each round undone if it costs more than the gate's utility
budget (twice it, as feature-constraint allows, since a repair follows), then ``repair`` on D_r.
Each round trains every weight on D_f under some target together with ``retain_ratio`` times as
many fresh D_r rows under their labels:

- ``relabel``: D_f under random wrong labels (random-label's and SalUn's target);
- ``neighbours``: D_f under the label histogram of each row's k nearest D_r rows (cosine, in
  the penultimate features or the input), a guess at what a model that never saw the row
  would say;
- ``reference``: D_f under the soft predictions of a model trained afresh (the pair's recipe)
  on a random ``reference_share`` of D_r: a target from a model that never saw D_f, at the
  price of a partial retrain (a ceiling on what a target can do, not a method);
- ``margin``: D_f under its own labels, except the rows a retrained model is expected to miss
  (the lowest true-class margins under the original, all but the random-forgetting level's
  share): a random wrong label there (``"flip": "relabel"``) or the original's runner-up class
  (``"flip": "runner-up"``). ``margin-auc`` measures how well that margin ranks the rows a
  model retrained without D_f gets right (it trains that model);
- ``scrub``: SCRUB's two steps (Kurmanji et al., 2023) as one round: an epoch that maximises
  the KL divergence from the original (frozen) to the model on D_f, then one that minimises
  KL plus cross-entropy on the fresh D_r rows (temperature 4).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from worker.bench.cache import ModelCache
from worker.bench.data import load_bench_data
from worker.bench.presets import default_cache_dir, get_suite
from worker.bench.runner import BenchRunner, Setting
from worker.bench.scenarios import draw_forget_set, unlearning_data
from worker.engine.architectures import classification_head
from worker.engine.gate import Gate
from worker.engine.gate_thresholds import GateThresholds
from worker.engine.methods import METHODS
from worker.engine.methods._base import UnlearningTask
from worker.engine.methods._baseline_utils import random_wrong_labels
from worker.engine.methods._common import (
    evaluating,
    freeze_norm_statistics,
    outputs,
    random_rows,
)
from worker.engine.methods._monitor import (
    Monitor,
    Weights,
    descend,
    relative_lr,
    repair,
    rows_a_retrained_model_misses,
    runner_up_labels,
    true_class_margin,
)
from worker.engine.training import iterate_batches, seeded_generator, train

ORIGINALS = Path(__file__).resolve().parents[2] / "zoo" / "originals"


def setup(pair_name: str, seed: int):
    preset = next(p for p in get_suite("zoo").pairs if p.name == pair_name)
    cache = default_cache_dir()
    data = load_bench_data(preset.dataset, cache, dict(preset.architecture_config))
    runner = BenchRunner(preset, data, ModelCache(cache, ORIGINALS))
    torch.set_num_threads(preset.torch_threads or 1)
    original = runner.original(seed)
    forget = draw_forget_set("random-10", data, seed)
    setting = Setting(seed, "random-10", unlearning_data(data, forget))
    gate = Gate(original, setting.data, GateThresholds(), runner.device, seed=seed)
    return runner, original, setting.data, gate


@torch.no_grad()
def representations(model, x, device, space: str) -> torch.Tensor:
    if space == "input":
        return x.flatten(1).float()
    captured = []
    hook = classification_head(model).register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach().flatten(1).cpu()))
    with evaluating(model):
        for xb, _ in iterate_batches(x, x, 256, shuffle=False):
            model(xb.to(device))
    hook.remove()
    return torch.cat(captured)


def neighbour_targets(model, data, device, k: int = 10, space: str = "features") -> torch.Tensor:
    """Per D_f row, the label histogram of its k nearest D_r rows."""
    def unit(rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(representations(model, data.x_train[rows], device, space), dim=1)

    retain, forget = unit(data.retain_idx), unit(data.forget_idx)
    nearest = (forget @ retain.T).topk(k, dim=1).indices
    counts = torch.zeros(len(forget), data.num_classes)
    counts.scatter_add_(1, data.y_train[data.retain_idx][nearest], torch.ones(nearest.shape))
    return counts / counts.sum(1, keepdim=True)


def margin_targets(model, data, device, level: float, flip: str,
                   generator: torch.Generator) -> torch.Tensor:
    """D_f's own labels, except on the rows a retrained model is expected to miss (the lowest
    true-class margins under the base model, all but the random-forgetting level's share):
    there a random wrong label (``relabel``) or the base model's runner-up class."""
    x_forget, y_forget = data.x_train[data.forget_idx], data.y_train[data.forget_idx]
    logits = outputs(model, x_forget, device)
    missed = rows_a_retrained_model_misses(logits, y_forget, level, 0.0)
    labels = y_forget.clone()
    if flip == "relabel":
        labels[missed] = random_wrong_labels(y_forget[missed], data.num_classes, generator)
    else:
        labels[missed] = runner_up_labels(logits, y_forget)[missed]
    return F.one_hot(labels, data.num_classes).float()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.log_softmax(1)).sum(1).mean()


def distill_kl(teacher_logits: torch.Tensor, logits: torch.Tensor,
               temperature: float = 4.0) -> torch.Tensor:
    """KL(teacher ‖ model) at ``temperature``, scaled by its square (SCRUB's DistillKL)."""
    return F.kl_div((logits / temperature).log_softmax(1),
                    (teacher_logits / temperature).softmax(1),
                    reduction="batchmean") * temperature ** 2


def forget_phase(model, data, device, seed: int, target: str, *, share: float = 0.02,
                 retain_ratio: float = 1.0, k: int = 10, space: str = "features",
                 max_rounds: int = 30, repair_rounds: int = 8, batch_size: int = 64,
                 reference: torch.nn.Module | None = None, flip: str = "relabel"):
    generator = seeded_generator(seed)
    monitor = Monitor(SimpleNamespace(data=data, device=device), samples=500,
                      generator=generator, read_retain=True)
    monitor.begin(model)
    x_forget, y_forget = data.x_train[data.forget_idx], data.y_train[data.forget_idx]
    classes = data.num_classes
    fixed = neighbour_targets(model, data, device, k, space) if target == "neighbours" else None
    if reference is not None:
        with torch.no_grad(), evaluating(reference):
            fixed = reference(x_forget.to(device)).softmax(1).cpu()

    if target == "margin":
        fixed = margin_targets(model, data, device, monitor.level, flip, generator)

    def forget_targets() -> torch.Tensor:
        if fixed is not None:
            return fixed
        return F.one_hot(random_wrong_labels(y_forget, classes, generator), classes).float()

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.0)
    retained = max(1, int(retain_ratio * len(x_forget)))

    def start_pass(lr):
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        freeze_norm_statistics(model)

    def train_on(x, targets, lr):
        start_pass(lr)
        for xb, tb in iterate_batches(x, targets, batch_size, shuffle=True, generator=generator):
            optimizer.zero_grad()
            soft_cross_entropy(model(xb.to(device)), tb.to(device)).backward()
            optimizer.step()

    teacher = copy.deepcopy(model).eval() if target == "scrub" else None

    def scrub_step(xb, yb, sign: float) -> None:
        optimizer.zero_grad()
        with torch.no_grad():
            taught = teacher(xb)
        logits = model(xb)
        loss = sign * distill_kl(taught, logits)
        if sign > 0:
            loss = loss + F.cross_entropy(logits, yb)
        loss.backward()
        optimizer.step()

    def scrub_round(_round, lr):
        start_pass(lr)
        for xb, yb in iterate_batches(x_forget, y_forget, batch_size, shuffle=True,
                                      generator=generator):
            scrub_step(xb.to(device), yb.to(device), -1.0)  # max-step
        rows = data.retain_idx[random_rows(len(data.retain_idx), retained, generator)]
        for xb, yb in iterate_batches(data.x_train[rows], data.y_train[rows], batch_size,
                                      shuffle=True, generator=generator):
            scrub_step(xb.to(device), yb.to(device), 1.0)  # min-step

    def forget_round(_round, lr):
        if teacher is not None:
            return scrub_round(_round, lr)
        rows = data.retain_idx[random_rows(len(data.retain_idx), retained, generator)]
        train_on(torch.cat([x_forget, data.x_train[rows]]),
                 torch.cat([forget_targets(), F.one_hot(data.y_train[rows], classes).float()]), lr)

    def repair_round(_round, lr):
        rows = data.retain_idx[random_rows(len(data.retain_idx), len(data.retain_idx) // 2,
                                           generator)]
        train_on(data.x_train[rows], F.one_hot(data.y_train[rows], classes).float(), lr)

    model.eval()
    model.zero_grad()
    # The step is sized on the cross-entropy of D_f under the phase's target (SCRUB's own loss
    # has no gradient at the start, where the model is its teacher: its true labels then).
    probe_targets = (F.one_hot(y_forget[:256], classes).float() if teacher is not None
                     else forget_targets()[:256])
    probe = soft_cross_entropy(model(x_forget[:256].to(device)), probe_targets.to(device))
    probe.backward()
    lr = relative_lr(parameters, [p.grad for p in parameters], share)
    model.zero_grad()
    weights = Weights(parameters)
    forgetting = descend(monitor, model, weights, forget_round, lr=lr, max_rounds=max_rounds,
                         budget_scale=2.0)
    repaired = repair(monitor, model, weights, repair_round, lr=forgetting.lr,
                      max_rounds=repair_rounds)
    return forgetting, repaired


def margin_auc(runner, original, data, seed: int) -> str:
    """How well the original's true-class margin on each D_f row ranks the rows a model
    retrained without D_f (the pair's recipe, this seed) gets right: a ROC AUC."""
    retrained = METHODS.get("retrain")()
    task = UnlearningTask(model=copy.deepcopy(original), build_fresh=runner.build_fresh,
                          data=data, recipe=runner.recipe(seed), device=runner.device)
    model = retrained.run(task, retrained.Params(seed=seed)).model
    x_forget, y_forget = data.x_train[data.forget_idx], data.y_train[data.forget_idx]
    right = (outputs(model, x_forget, runner.device).argmax(1) == y_forget).numpy()
    margin = true_class_margin(outputs(original, x_forget, runner.device), y_forget).numpy()
    return (f"retrained model right on {100 * right.mean():.1f}% of D_f; AUC of the original's "
            f"margin {roc_auc_score(right, margin):.3f}")


def verdict_line(gate, model) -> str:
    verdict = gate.judge(model).as_dict()
    f = verdict["figures"]
    failed = [c["name"] for c in verdict["criteria"] if not c["passed"]]
    return (f"gate {verdict['verdict']} {failed} TA {f['base_test_accuracy']:.1f}->"
            f"{f['test_accuracy']:.1f} RA {f['base_retain_accuracy']:.1f}->"
            f"{f['retain_accuracy']:.1f} D_f acc {f['forget_accuracy']:.1f} MIA non-member "
            f"D_f/held-out {f['mia_forget_nonmember']}/{f['mia_held_out_nonmember']}")


def main(pair_name: str, seeds: str, what: str, options: dict) -> None:
    for seed in map(int, seeds.split(",")):
        runner, original, data, gate = setup(pair_name, seed)
        if what == "margin-auc":
            print(f"{pair_name} seed {seed}: {margin_auc(runner, original, data, seed)}",
                  flush=True)
            continue
        if what == "agreement":
            y_forget = data.y_train[data.forget_idx]
            for k in (10, 50, 200):
                targets = neighbour_targets(original, data, runner.device, k, "features")
                agree = float((targets.argmax(1) == y_forget).float().mean())
                print(f"{pair_name} seed {seed} k={k}: neighbours' majority is D_f's label on "
                      f"{100 * agree:.1f}%", flush=True)
            continue
        model = copy.deepcopy(original)
        started = time.perf_counter()
        if what == "reference":
            options = dict(options)
            share = options.pop("reference_share", 0.5)
            rows = data.retain_idx[random_rows(len(data.retain_idx),
                                               int(share * len(data.retain_idx)),
                                               seeded_generator(seed))]
            options["reference"] = train(runner.build_fresh(), data.x_train[rows],
                                         data.y_train[rows], runner.recipe(seed), runner.device)
            print(f"  reference on {len(rows)} D_r rows: {time.perf_counter() - started:.1f} s")
        forgetting, repaired = forget_phase(model, data, runner.device, seed, what, **options)
        shown = {key: value for key, value in options.items() if key != "reference"}
        print(f"{pair_name} seed {seed} {what} {shown}: {time.perf_counter() - started:.1f} s, "
              f"descend {forgetting.stop_reason} after {forgetting.kept:.2f} rounds, repair "
              f"{repaired.stop_reason}; {verdict_line(gate, model)}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4], json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
