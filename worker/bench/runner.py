"""``lethe bench``: train (or load) the original model, retrain on D_r as the reference, run
each method on the same forget set, score everything against the reference and put every
result through the acceptance gate, per seed; a suite repeats this for each of its pairs."""

from __future__ import annotations

import copy
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from worker.bench import BenchConfigError
from worker.bench.cache import ModelCache, original_key
from worker.bench.data import BenchData, load_bench_data
from worker.bench.presets import (
    BUILT_IN_SOURCES,
    SCENARIOS,
    Preset,
    PresetSuite,
    Variant,
    default_cache_dir,
    get_suite,
)
from worker.bench.progress import BenchProgress
from worker.bench.report import write_report
from worker.bench.scenarios import draw_forget_set, evaluation_data, unlearning_data
from worker.bench.scoring import (
    Trial,
    average_over_pairs,
    gate_pass_rates,
    percent_scores,
    summarise,
)
from worker.engine.architectures import ARCHITECTURES, Classifier, build_model
from worker.engine.architectures.huggingface import with_labels
from worker.engine.data.tables import TableColumns
from worker.engine.device import GPU_EVAL_BATCH, compiling, on_gpu, pick_device
from worker.engine.gate import Gate, GateThresholds
from worker.engine.methods import METHODS, ProgressFn, UnlearningData, UnlearningTask
from worker.engine.metrics import (
    accuracy,
    ensure_finite,
    evaluate_with_salun_mia,
    js_divergence,
    predict_logits,
)
from worker.engine.training import TrainingRecipe, seeded, train

REFERENCE = "retrain"


@dataclass(frozen=True)
class Contender:
    """One row of the table: a method with its parameter overrides, and those that apply to
    one scenario only (over ``params``)."""

    label: str
    method: str
    params: dict[str, Any]
    scenario_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def params_for(self, scenario: str) -> dict[str, Any]:
        return {**self.params, **self.scenario_params.get(scenario, {})}


@dataclass(frozen=True)
class Setting:
    """One seed's forget set of one scenario: what every contender of a row group gets."""

    seed: int
    scenario: str
    data: UnlearningData


@dataclass
class BenchOutput:
    results: dict[str, Any]
    paths: dict[str, Path]


def run_bench(preset: str = "smoke", out: Path = Path("bench-out"), *,
              methods: list[str] | None = None, scenarios: list[str] | None = None,
              seeds: list[int] | None = None, dataset: Path | None = None,
              cache_dir: Path | None = None, show_progress: bool = True,
              workers: int = 1, architecture: str | None = None,
              architecture_config: dict[str, Any] | None = None,
              columns: TableColumns | None = None, tokenizer: Path | None = None,
              recipe: dict[str, Any] | None = None,
              originals: Path | None = None) -> BenchOutput:
    """Run the preset (or the part of it the options select) and write the report to ``out``.
    A suite (e.g. ``zoo``) runs the same selection on each of its pairs, ``workers`` of them
    at once in processes of their own (every time and speed-up is still measured within one
    pair's process, so the ratios compare; absolute seconds grow with the contention).
    ``columns`` say how a table ``dataset`` is read; a text table runs on a text classifier
    (``hf-text-classifier``), tokenized by ``tokenizer`` (a tokenizer.json) or, without one,
    by a word-level tokenizer built from its training texts, as ``lethe train`` does.
    ``recipe`` overrides fields of every pair's training recipe (a model trained from its
    config alone wants a higher learning rate than a fine-tuning one). ``originals`` is a
    pinned set of original models (:class:`ModelCache`): read first, and what is trained is
    kept there, so runs on other machines start from the same weights."""
    suite = with_recipe(with_architecture(resolve_suite(preset, dataset, columns, tokenizer),
                                          architecture, architecture_config), recipe)
    # Every pair's plan first: a bad option fails before the first pair's hours of training.
    plans = [PairPlan(pair, plan_contenders(pair, methods), plan_scenarios(pair, scenarios),
                      plan_seeds(pair, seeds), originals) for pair in suite.pairs]
    cache_dir = Path(cache_dir or default_cache_dir())
    started = time.perf_counter()
    pair_results = run_pairs(plans, cache_dir, show_progress, workers)
    results = pair_results[0] if len(pair_results) == 1 else suite_results(suite, pair_results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return BenchOutput(results, write_report(results, Path(out)))


@dataclass(frozen=True)
class PairPlan:
    """What one pair of a run covers."""

    preset: Preset
    contenders: list[Contender]
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    originals: Path | None = None  # a pinned set of original models (ModelCache)


def run_pair(plan: PairPlan, cache_dir: Path, show_progress: bool) -> dict[str, Any]:
    """One dataset and architecture: every contender over the seeds and scenarios."""
    started = time.perf_counter()
    data = load_bench_data(plan.preset.dataset, cache_dir, dict(plan.preset.architecture_config))
    runner = BenchRunner(plan.preset, data, ModelCache(cache_dir, plan.originals))
    trials = runner.run(plan.contenders, plan.scenarios, plan.seeds, show_progress)
    results = runner.results(trials, plan.scenarios, plan.seeds)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


PairJob = Callable[[PairPlan, Path, bool], dict[str, Any]]


def run_pairs(plans: list[PairPlan], cache_dir: Path, show_progress: bool,
              workers: int, job: PairJob = run_pair) -> list[dict[str, Any]]:
    """``job`` (run_pair, or a picklable one of the same signature) on every plan, up to
    ``workers`` pairs at once, each in its own process; the results in the plans' order."""
    if workers <= 1 or len(plans) == 1:
        return [job(plan, cache_dir, show_progress) for plan in plans]
    # Spawned, not forked: a forked child inherits torch's thread pools mid-state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(job, plans, [cache_dir] * len(plans),
                             [False] * len(plans)))  # bars from several processes interleave


def suite_results(suite: PresetSuite, pair_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each pair's results as they are, and the rows averaged over the pairs."""
    rows = average_over_pairs({results["pair"]: results["rows"] for results in pair_results})
    first = pair_results[0]
    return {"preset": suite.name, "description": suite.description,
            "pairs": pair_results, "seeds": first["seeds"], "scenarios": first["scenarios"],
            "device": first["device"], "torch_threads": first["torch_threads"],
            "created": first["created"], "rows": rows, "gate": gate_pass_rates(rows)}


def resolve_suite(name: str, dataset: Path | None, columns: TableColumns | None = None,
                  tokenizer: Path | None = None) -> PresetSuite:
    suite = get_suite(name)
    if dataset is None:
        if columns is not None or tokenizer is not None:
            raise BenchConfigError("the table columns and --tokenizer go with --dataset")
        return suite
    if len(suite.pairs) > 1:
        raise BenchConfigError(f"--dataset replaces one preset's data; {name!r} has "
                               f"{len(suite.pairs)} pairs, each with its own")
    return PresetSuite(suite.name, suite.description,
                       (suite.pairs[0].with_dataset(dataset, columns, tokenizer),))


def with_architecture(suite: PresetSuite, architecture: str | None,
                      config: dict[str, Any] | None) -> PresetSuite:
    """The suite with every pair's architecture replaced (``--architecture``): its config as
    given, its recipe the preset's with the architecture's own defaults (a transformer's
    AdamW) over it; or a BenchConfigError saying what is missing."""
    if architecture is None:
        if config:
            raise BenchConfigError("--architecture-config goes with --architecture")
        if any(pair.dataset.tokenizer is not None for pair in suite.pairs):
            raise BenchConfigError("--tokenizer goes with a text classifier "
                                   "(--architecture hf-text-classifier)")
        return suite
    if architecture not in ARCHITECTURES:
        raise BenchConfigError(f"unknown architecture {architecture!r}; known: "
                               f"{', '.join(ARCHITECTURES.names())}")
    entry = ARCHITECTURES.get(architecture)
    config = dict(config or {})
    if "hf_config" in entry.config_model.model_fields and "hf_config" not in config:
        raise BenchConfigError(f"{architecture} needs --architecture-config with hf_config, "
                               "the model's config.json (its labels are set to the data's)")
    text = "tokenizer_sha256" in entry.config_model.model_fields
    for pair in suite.pairs:
        if text and pair.dataset.source in BUILT_IN_SOURCES:
            raise BenchConfigError(f"{architecture} needs --dataset: a text table (CSV, JSON "
                                   "Lines or Parquet) and its --text-column; the preset's "
                                   f"{pair.dataset.source} is not text")
        if not text and pair.dataset.tokenizer is not None:
            raise BenchConfigError("--tokenizer goes with a text classifier "
                                   "(--architecture hf-text-classifier)")
    # The tokenizer's fields come from the data (bench/data.py), as lethe train sets them.
    defaults = {k: v for k, v in (entry.default_recipe or {}).items()
                if k not in ("epochs", "batch_size")} | ({"augment": False} if text else {})
    pairs = tuple(replace(pair, architecture=architecture, architecture_config=config,
                          recipe=TrainingRecipe.model_validate(
                              pair.recipe.model_dump() | defaults))
                  for pair in suite.pairs)
    return PresetSuite(suite.name, suite.description, pairs)


def with_recipe(suite: PresetSuite, recipe: dict[str, Any] | None) -> PresetSuite:
    """The suite with ``recipe``'s fields over every pair's training recipe."""
    if not recipe:
        return suite
    try:
        pairs = tuple(replace(pair, recipe=TrainingRecipe.model_validate(
            pair.recipe.model_dump() | recipe)) for pair in suite.pairs)
    except ValueError as exc:
        raise BenchConfigError(f"--training-config: {exc}") from None
    return PresetSuite(suite.name, suite.description, pairs)


def plan_contenders(preset: Preset, methods: list[str] | None) -> list[Contender]:
    """Retrain first (every gap and speed-up is measured against it), then the methods asked
    for, each with the preset's overrides checked against its parameter schema, then the
    preset's labelled variants. Without ``methods``: the preset's methods (default every
    registered one) and all its variants; with it, each name is a method or a variant's label."""
    variants = {variant.label: variant for variant in preset.variants}
    names = methods or [*(preset.methods or METHODS.names()), *variants]
    unknown = [name for name in names if name not in METHODS and name not in variants]
    if unknown:
        raise BenchConfigError(f"unknown method(s) {', '.join(unknown)}; known: "
                               f"{', '.join([*METHODS.names(), *variants])}")
    ordered = [REFERENCE, *(name for name in dict.fromkeys(names) if name != REFERENCE)]
    return [variant_contender(preset, variants[name]) if name in variants
            else contender(name, preset.params_for(name)) for name in ordered]


def contender(method: str, params: dict[str, Any], label: str | None = None,
              scenario_params: dict[str, dict[str, Any]] | None = None) -> Contender:
    planned = Contender(label or method, method, params, dict(scenario_params or {}))
    for scenario in (None, *planned.scenario_params):  # fail before hours of training
        METHODS.get(method).Params.model_validate(planned.params_for(scenario))
    return planned


def variant_contender(preset: Preset, variant: Variant) -> Contender:
    """A variant's row: the preset's overrides for its method, then the variant's own."""
    if variant.method not in METHODS:
        raise BenchConfigError(f"variant {variant.label!r} names unknown method "
                               f"{variant.method!r}")
    return contender(variant.method, {**preset.params_for(variant.method), **variant.params},
                     variant.label,
                     {scenario: dict(params) for scenario, params in
                      variant.scenario_params.items()})


def plan_scenarios(preset: Preset, scenarios: list[str] | None) -> tuple[str, ...]:
    names = tuple(scenarios or preset.scenarios)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise BenchConfigError(f"unknown scenario(s) {', '.join(unknown)}; known: "
                               f"{', '.join(SCENARIOS)}")
    return names


def plan_seeds(preset: Preset, seeds: list[int] | None) -> tuple[int, ...]:
    chosen = tuple(seeds if seeds is not None else preset.seeds)
    if not chosen or any(seed < 0 for seed in chosen):
        raise BenchConfigError("seeds must be one or more non-negative integers")
    return chosen


class BenchRunner:
    """Runs contenders over seeds and scenarios on one dataset, architecture and recipe."""

    def __init__(self, preset: Preset, data: BenchData, cache: ModelCache,
                 device: torch.device | None = None):
        self.preset, self.data, self.cache = preset, data, cache
        self.device = device or pick_device()
        self.config = {"num_classes": data.num_classes, "input_shape": data.input_shape,
                       **preset.architecture_config, **data.model_config}
        if "hf_config" in self.config:  # a Hugging Face config's labels are the data's classes
            self.config["hf_config"] = with_labels(self.config["hf_config"], data.classes)
        self.originals: list[dict[str, Any]] = []
        self.progress = BenchProgress(0, enabled=False)
        self._gates: dict[tuple[int, str], Gate] = {}  # per (seed, scenario)

    def build_fresh(self) -> Classifier:
        return build_model(self.preset.architecture, self.config)

    def recipe(self, seed: int) -> TrainingRecipe:
        return self.preset.recipe.model_copy(update={"seed": seed})

    def run(self, contenders: list[Contender], scenarios: tuple[str, ...],
            seeds: tuple[int, ...], show_progress: bool = True) -> list[Trial]:
        steps = 1 + len(seeds) * (1 + len(scenarios) * len(contenders))  # 1: the warm-up
        trials: list[Trial] = []
        with (threads(self.preset.torch_threads), compiling(self.preset.compile),
              BenchProgress(steps, show_progress) as self.progress):
            self.warm_up()
            for seed in seeds:
                original = self.original(seed)
                for scenario in scenarios:
                    trials += self.scenario_trials(original, seed, scenario, contenders)
        return trials

    def warm_up(self) -> None:
        """A few untimed training steps, so one-off start-up costs (thread pools, allocator,
        kernel selection) are not charged to whichever method happens to run first."""
        rows = slice(0, 4 * self.preset.recipe.batch_size)
        with self.progress.step("warming up"):
            train(self.build_fresh(), self.data.x_train[rows], self.data.y_train[rows],
                  self.preset.recipe, self.device, epochs=1)

    def original(self, seed: int) -> Classifier:
        """The model every method starts from: from the cache, else trained and cached."""
        recipe = self.recipe(seed)
        key = original_key(self.data.sha256, self.preset.architecture, self.config, recipe, seed)
        # Built and trained under the seed, as retrain builds and trains its model.
        with seeded(seed), self.progress.step(f"seed {seed}: original model") as progress:
            model = self.build_fresh()
            found = self.cache.locate(key)
            info = self.cache.load(key, model)
            cache_hit = info is not None
            if not cache_hit:
                info = self._train_original(model, recipe, progress)
                self.cache.save(key, model, info)
        pinned = found is not None and found.parent == self.cache.pinned
        self.originals.append({"seed": seed, "cache_hit": cache_hit, "pinned": pinned,
                               "key": key, **info})
        return model.to(self.device).eval()

    def _train_original(self, model: Classifier, recipe: TrainingRecipe,
                        progress: ProgressFn) -> dict[str, Any]:
        started = time.perf_counter()
        train(model, self.data.x_train, self.data.y_train, recipe, self.device,
              progress=progress)
        seconds = _elapsed(started, self.device)
        return {"train_seconds": round(seconds, 3),
                "train_accuracy": accuracy(model, self.data.x_train, self.data.y_train,
                                           self.device),
                "test_accuracy": accuracy(model, self.data.x_test, self.data.y_test, self.device)}

    def scenario_trials(self, original: Classifier, seed: int, scenario: str,
                        contenders: list[Contender]) -> list[Trial]:
        """The reference (the first contender) on this seed's forget set, then the others,
        each scored against it."""
        setting = Setting(seed, scenario,
                          unlearning_data(self.data, draw_forget_set(scenario, self.data, seed)))
        reference, *others = contenders
        reference_trial, reference_logits = self._trial(original, setting, reference)
        if reference_trial.error:
            raise RuntimeError(f"the reference ({reference.label}) failed: "
                               f"{reference_trial.error}")
        reference_trial.js = 0.0
        trials = [reference_trial]
        for other in others:
            trial, logits = self._trial(original, setting, other)
            if logits is not None:
                trial.js = js_divergence(logits, reference_logits)
            trials.append(trial)
        return trials

    def _trial(self, original: Classifier, setting: Setting,
               contender: Contender) -> tuple[Trial, torch.Tensor | None]:
        """Run and score one contender; returns its forget-set logits too (None if it failed).
        A failing method, or one that leaves a broken model, becomes a row with its error, so
        the run goes on and the table hides nothing."""
        method = METHODS.get(contender.method)
        seed = setting.seed
        params = method.Params.model_validate(
            {**contender.params_for(setting.scenario), "seed": seed})
        trial = Trial(seed, setting.scenario, contender.label, contender.method,
                      params.model_dump(mode="json", exclude={"seed"}))
        step = f"seed {seed}: {setting.scenario}: {contender.label}"
        with self.progress.step(step) as progress:
            task = UnlearningTask(model=copy.deepcopy(original), build_fresh=self.build_fresh,
                                  data=setting.data, recipe=self.recipe(seed),
                                  device=self.device, progress=progress)
            try:
                started = time.perf_counter()
                outcome = method().run(task, params)
                trial.seconds = _elapsed(started, self.device)
                trial.metrics = outcome.metrics
                trial.gate = self._gate(original, outcome.model, setting, contender.method)
                return trial, self._score(trial, outcome.model, setting)
            except Exception as exc:  # one method's failure must not end the run
                trial.error = f"{type(exc).__name__}: {exc}"
                trial.scores = None
                return trial, None

    def _score(self, trial: Trial, model: Classifier, setting: Setting) -> torch.Tensor:
        """Fill in the trial's scores (Lethe's MIA and SalUn's); returns the model's logits
        on D_f."""
        data = setting.data
        forget_logits = ensure_finite(
            predict_logits(model, data.x_train[data.forget_idx], self.device))
        trial.scores = percent_scores(
            evaluate_with_salun_mia(model, evaluation_data(data), self.device, setting.seed))
        return forget_logits

    def _gate(self, original: Classifier, model: Classifier, setting: Setting,
              method: str) -> dict[str, Any]:
        """The acceptance gate's verdict at its default thresholds, on the data the method
        saw (the gate leaves out a forgotten class's test rows itself). Retraining is exact:
        the gate publishes it whatever its noise-level figures say."""
        try:
            key = (setting.seed, setting.scenario)
            if key not in self._gates:  # the original's outputs, once per forget set
                self._gates[key] = Gate(original, setting.data, GateThresholds(), self.device,
                                        seed=setting.seed)
            verdict = self._gates[key].judge(model, exact=method == REFERENCE)
        except Exception as exc:  # a gate failure must not read as the method's
            return {"verdict": "error", "error": f"{type(exc).__name__}: {exc}"}
        return verdict.as_dict()

    def results(self, trials: list[Trial], scenarios: tuple[str, ...],
                seeds: tuple[int, ...]) -> dict[str, Any]:
        rows = summarise(trials, REFERENCE)
        return self._gpu_settings() | {
            "preset": self.preset.name,
            "pair": self.preset.name,
            "dataset": {"source": self.preset.dataset.source, **self.data.describe()},
            "architecture": self.preset.architecture,
            "architecture_config": {**self.config, "input_shape": list(self.data.input_shape)},
            "recipe": self.preset.recipe.model_dump(mode="json", exclude={"seed"}),
            "seeds": list(seeds),
            "scenarios": list(scenarios),
            "device": str(self.device),
            "torch_threads": self.preset.torch_threads or torch.get_num_threads(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "originals": self.originals,
            "rows": rows,
            "gate": gate_pass_rates(rows),
        }

    def _gpu_settings(self) -> dict[str, Any]:
        """On a GPU, the GPU and how it was used (results from a CPU carry no such key)."""
        if not on_gpu(self.device):
            return {}
        return {"gpu": {"name": torch.cuda.get_device_name(self.device),
                        "autocast": "bf16" if torch.cuda.is_bf16_supported() else "none",
                        "channels_last": True, "data_on_device": True,
                        "eval_batch": GPU_EVAL_BATCH, "compile": self.preset.compile}}


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count for the block, then the caller's back."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _elapsed(started: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously; wait for the last one
    return time.perf_counter() - started
