"""How long a bench preset would take on a GPU, estimated from a CPU profile: an estimate, not
a measurement, for when no GPU is at hand (``python -m worker.bench.estimate --preset
gpu-quick``).

1. **Profile** (measured, on this CPU): a few training steps of the preset's architecture at
   the preset's batch size (or fewer rows, ``profile_rows``; the FLOPs of a convnet's step
   are proportional to its rows), a forward pass, and, when the preset runs them, one chunk of
   DeepClean's per-sample Fisher gradients and one batch of projected-gradient's
   representation matrices. ``torch.utils.flop_counter.FlopCounterMode`` counts each one's
   FLOPs (a multiply-add is two), a dispatch mode counts the operators it launches (views
   excluded), and the wall clock times it.
2. **Workload** (counted from the preset): per contender and scenario, how many steps of
   each kind it takes and with how many rows, from the data's size, the recipe and each
   method's parameters. Methods that stop by a rule (projected-gradient, deepclean,
   feature-constraint) take the most rounds the zoo's ResNet-18 pair ran on any seed
   (``benchmarks/zoo/results.json``), and at most their parameters' caps (the bound).
3. **GPU time** (assumed): each step takes the longer of its FLOPs at an assumed sustained
   rate and its operators at an assumed launch cost (:class:`GpuAssumptions`; eager PyTorch
   cannot go faster than it launches kernels). Nothing here ran on a GPU.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from worker.bench import BenchConfigError
from worker.bench.presets import CIFAR10, Preset, get_preset
from worker.bench.scenarios import RANDOM_FRACTION
from worker.engine.architectures import build_model
from worker.engine.device import GPU_EVAL_BATCH
from worker.engine.methods import METHODS
from worker.engine.methods._monitor import LEVEL_ROWS
from worker.engine.metrics import DEFAULT_MAX_EVAL
from worker.engine.training import make_optimizer

CAVEAT = "estimate, not a measurement"
GATE_ROWS = 2000  # GateThresholds().sample_rows: rows of each set the gate evaluates


@dataclass(frozen=True)
class GpuAssumptions:
    """What the estimate assumes of the GPU: stated, not measured."""

    gpu: str = "one NVIDIA H100 SXM (80 GB)"
    bf16_peak_tflops: float = 989.0  # dense bf16 tensor-core peak (NVIDIA's datasheet)
    tf32_peak_tflops: float = 494.7  # dense TF32 peak: float32 convolutions (cuDNN's default)
    fp32_peak_tflops: float = 66.9  # float32 without tensor cores: float32 matmuls
    # Share of the tensor-core peak an eager ResNet-18-sized convnet sustains on 32×32 images
    # (memory-bound BatchNorm and ReLU, 64-channel convolutions): about 2.5 s an epoch of
    # CIFAR-10 at batch 512 in bf16, as such training is commonly reported to run.
    convnet_share: float = 0.05
    matmul_share: float = 0.5  # of the float32 peak, for large dense matmuls
    eigh_tflops: float = 0.4  # float64 symmetric eigendecomposition (cuSOLVER), ~9·n³ FLOPs
    launch_us: float = 10.0  # host time to launch one operator in eager PyTorch
    startup_s: float = 20.0  # interpreter, CUDA context, cuDNN's first kernel choices

    def rate(self, precision: str) -> float:
        """Sustained FLOP/s of a convnet pass in ``precision`` ('bf16' or 'fp32')."""
        peak = self.bf16_peak_tflops if precision == "bf16" else self.tf32_peak_tflops
        return peak * self.convnet_share * 1e12

    def describe(self) -> list[str]:
        return [
            f"GPU: {self.gpu}.",
            f"Training-like passes under bf16 autocast sustain {self.convnet_share:.0%} of the "
            f"{self.bf16_peak_tflops:g} TFLOP/s dense bf16 peak "
            f"({self.rate('bf16') / 1e12:.1f} TFLOP/s); float32 passes (evaluation, Fisher, "
            f"projected-gradient) {self.convnet_share:.0%} of the {self.tf32_peak_tflops:g} "
            f"TFLOP/s TF32 peak ({self.rate('fp32') / 1e12:.1f} TFLOP/s).",
            f"Large float32 matmuls (projection products) sustain {self.matmul_share:.0%} of "
            f"the {self.fp32_peak_tflops:g} TFLOP/s float32 peak; float64 eigendecompositions "
            f"{self.eigh_tflops:g} TFLOP/s (9·n³ FLOPs each).",
            f"A step takes at least {self.launch_us:g} µs of host time per operator it "
            "launches (eager PyTorch, no CUDA graphs, no torch.compile).",
            f"Start-up: {self.startup_s:g} s; data loading as measured on this CPU when "
            "timed, else not counted.",
        ]


H100 = GpuAssumptions()


@dataclass(frozen=True)
class DataShape:
    num_train: int
    num_test: int
    num_classes: int
    input_shape: tuple[int, ...]


# The built-in sources whose sizes are known without decoding them.
KNOWN_SHAPES = {CIFAR10: DataShape(50_000, 10_000, 10, (3, 32, 32))}


def data_shape(preset: Preset) -> DataShape:
    spec = preset.dataset
    if spec.source not in KNOWN_SHAPES:
        raise BenchConfigError(f"no known size for {spec.source!r}: pass a DataShape")
    shape = KNOWN_SHAPES[spec.source]
    return replace(shape, num_train=min(shape.num_train, spec.train_size or shape.num_train),
                   num_test=min(shape.num_test, spec.test_size or shape.num_test))


# --- Profile ---------------------------------------------------------------------------------

class _OperatorCount(TorchDispatchMode):
    """Counts the operators dispatched (views excluded: they launch no kernel)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.count += 1
        return func(*args, **(kwargs or {}))


@dataclass
class StepProfile:
    """One kind of step, measured on this CPU."""

    kind: str
    rows: int
    flops: float  # per call, all rows
    operators: int  # per call
    cpu_seconds: float  # per call
    matmul_flops: float = 0.0  # of ``flops``, in large float32 matmuls (not the model's)

    @property
    def flops_per_row(self) -> float:
        return self.flops / max(1, self.rows)

    @property
    def cpu_seconds_per_row(self) -> float:
        return self.cpu_seconds / max(1, self.rows)


def _measure(kind: str, rows: int, call: Callable[[], Any], repeats: int) -> StepProfile:
    call()  # warm-up: allocator, thread pools, first-call paths
    counter, operators = FlopCounterMode(display=False), _OperatorCount()
    with counter, operators:
        call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    seconds = (time.perf_counter() - started) / repeats
    return StepProfile(kind, rows, float(counter.get_total_flops()), operators.count, seconds)


def profile(preset: Preset, shape: DataShape, *, profile_rows: int | None = None,
            repeats: int = 2, kinds: set[str] | None = None) -> dict[str, StepProfile]:
    """Measure the preset's architecture's steps on the CPU (see the module's doc)."""
    rows = min(preset.recipe.batch_size, profile_rows or preset.recipe.batch_size)
    generator = torch.Generator().manual_seed(0)
    model = _model(preset, shape)
    x = torch.randn((rows, *shape.input_shape), generator=generator)
    y = torch.randint(shape.num_classes, (rows,), generator=generator)
    optimizer = make_optimizer(model.parameters(), preset.recipe)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    @torch.no_grad()
    def forward() -> None:
        model.eval()
        model(x)

    profiles = {"train": _measure("train", rows, train_step, repeats),
                "forward": _measure("forward", rows, forward, repeats)}
    kinds = kinds or set()
    if "fisher" in kinds:
        from worker.engine.methods.deepclean import fisher_diagonal

        chunk = min(rows, 8)
        profiles["fisher"] = _measure("fisher", chunk, lambda: fisher_diagonal(
            model, x[:chunk], y[:chunk], device=torch.device("cpu"), chunk=chunk), 1)
    if "representation" in kinds:
        from worker.engine.methods.projected_gradient import representation_matrices

        few = min(rows, 4)
        step = _measure("representation", few, lambda: representation_matrices(
            model, x[:few], device=torch.device("cpu"), batch_size=few), 1)
        step.matmul_flops = max(0.0, step.flops - profiles["forward"].flops_per_row * few)
        profiles["representation"] = step
    return profiles


def _model(preset: Preset, shape: DataShape) -> torch.nn.Module:
    config = {"num_classes": shape.num_classes, "input_shape": list(shape.input_shape),
              **preset.architecture_config}
    return build_model(preset.architecture, config)


# --- Workload --------------------------------------------------------------------------------

@dataclass
class Phase:
    """``steps`` steps of one part of one contender's run (or of the bench around them)."""

    label: str
    scenario: str
    part: str
    steps: float
    rows: dict[str, float]  # per step: rows of each profiled kind
    calls: dict[str, float]  # per step: calls of each kind (for the launch floor)
    precision: str = "fp32"
    matmul_flops: float = 0.0  # per step, large float32 matmuls beyond the profiled ones
    eigh_flops: float = 0.0  # in all (not per step)
    host_seconds: float = 0.0  # in all: CPU work the GPU does not do (measured here)


def _train(label, scenario, part, steps, rows, precision="bf16", train_calls=1.0,
           forward_rows=0.0, forward_calls=0.0, matmul_flops=0.0) -> Phase:
    return Phase(label, scenario, part, steps, {"train": rows, "forward": forward_rows},
                 {"train": train_calls, "forward": forward_calls}, precision, matmul_flops)


def _forward(label, scenario, part, rows, batch) -> Phase:
    steps = math.ceil(rows / batch) if rows else 0
    return Phase(label, scenario, part, steps, {"forward": rows / max(1, steps)},
                 {"forward": 1.0}, "fp32")


@dataclass
class Sizes:
    """Row counts of one scenario."""

    train: int
    forget: int
    retain: int
    test: int  # the retained classes' test rows
    classes_forgotten: int  # classes whose rows the forget set holds (unsir's noise)
    classes_retained: int
    share_forgotten: float  # of each such class's rows

    @classmethod
    def of(cls, shape: DataShape, scenario: str) -> Sizes:
        c = shape.num_classes
        if scenario == "class":  # balanced classes assumed
            forget = shape.num_train // c
            return cls(shape.num_train, forget, shape.num_train - forget,
                       shape.num_test - shape.num_test // c, 1, c - 1, 1.0)
        forget = round(RANDOM_FRACTION * shape.num_train)
        return cls(shape.num_train, forget, shape.num_train - forget, shape.num_test, c, c,
                   RANDOM_FRACTION)


def _steps(rows: int, batch: int) -> int:
    return math.ceil(rows / batch)


def _full_batches(rows: int, batch: int) -> int:
    """Steps of ``train`` over ``rows``: BatchNorm models drop a ragged last batch."""
    return rows // batch if rows > batch else 1


# The most rounds the zoo's ResNet-18 pair (benchmarks/zoo/results.json: CIFAR-10, 2,000
# images) ran on any of its seeds: attempts, and epoch passes over all attempts with undone
# ones counted (projected-gradient: γ attempts and epochs over D_f; deepclean: reset attempts
# and fine-tuning passes per attempt; feature-constraint: forget epochs and repair epochs).
TYPICAL_ROUNDS = {
    ("projected-gradient", "random-10"): {"attempts": 2, "epochs": 28},
    ("projected-gradient", "class"): {"attempts": 1, "epochs": 1},
    ("deepclean", "random-10"): {"attempts": 3, "passes": 8},
    ("deepclean", "class"): {"attempts": 1, "passes": 1},
    ("feature-constraint", "random-10"): {"epochs": 16, "repair": 4},
    ("feature-constraint", "class"): {"epochs": 20, "repair": 4},
}
BISECT_SCORES = 4  # monitor checks of a random-forgetting bisection (bisect_steps' default)


def _rounds(method: str, scenario: str, params: Any, bound: bool) -> dict[str, int]:
    if method == "projected-gradient":
        from worker.engine.methods.projected_gradient import gamma_ladder

        first = params.class_gamma if scenario == "class" else params.gamma
        ladder = len(gamma_ladder(first, min(params.gamma_floor, first), params.gamma_step))
        if bound or not params.adapt_step:  # the paper's fixed schedule runs to max_epochs
            return {"attempts": ladder, "epochs": ladder * params.max_epochs}
        typical = TYPICAL_ROUNDS[(method, scenario)]
        return {"attempts": min(ladder, typical["attempts"]),
                "epochs": min(ladder * params.max_epochs, typical["epochs"])}
    if method == "deepclean":
        cap = {"attempts": params.max_resets, "passes": params.finetune_epochs}
    else:
        cap = {"epochs": params.epochs, "repair": params.repair_epochs}
    if bound:
        return cap
    return {k: min(v, cap[k]) for k, v in TYPICAL_ROUNDS[(method, scenario)].items()}


def _monitor_rows(sizes: Sizes, samples: int, read_retain: bool) -> float:
    """Rows the monitor predicts besides its rounds: base predictions and a first score, and
    every test (and retain) row up to LEVEL_ROWS twice: the base model's (they place a
    random-forgetting level) and one confirmation of the stopping point."""
    per_score = samples * (3 if read_retain else 2)
    rows = samples * (2 if read_retain else 1) + per_score
    whole = min(sizes.test, LEVEL_ROWS) + (min(sizes.retain, LEVEL_ROWS) if read_retain else 0)
    return rows + 2 * whole


def method_phases(label: str, method: str, params: Any, scenario: str, sizes: Sizes,
                  preset: Preset, *, bound: bool, layers: dict[str, tuple[int, int]]
                  ) -> list[Phase]:
    """The steps one contender takes on one scenario."""
    r = preset.recipe
    s, ph = scenario, []
    steps, full = _steps, _full_batches
    if method == "retrain":
        epochs = params.epochs or r.epochs
        ph.append(_train(label, s, f"train {epochs} epochs on D_r",
                         epochs * full(sizes.retain, r.batch_size), r.batch_size))
    elif method == "finetune":
        ph.append(_train(label, s, f"{params.epochs} epochs on D_r",
                         params.epochs * full(sizes.retain, r.batch_size), r.batch_size))
    elif method in ("salun", "random-label"):
        if method == "salun":
            ph.append(_train(label, s, "saliency over D_f", steps(sizes.forget, params.batch_size),
                             params.batch_size, "fp32"))
        ph.append(_train(label, s, f"{params.epochs} epochs on D_r ∪ D_f",
                         params.epochs * steps(sizes.train, params.batch_size), params.batch_size))
    elif method == "l1-sparse":
        ph.append(_train(label, s, f"{params.epochs} epochs on D_r",
                         params.epochs * steps(sizes.retain, params.batch_size), params.batch_size))
    elif method == "neggrad":
        ph.append(_train(label, s, f"{params.epochs} epochs on D_r paired with D_f",
                         params.epochs * steps(sizes.retain, params.batch_size),
                         2 * params.batch_size, train_calls=2))
    elif method == "bad-teacher":
        rows = sizes.forget + math.ceil(params.retain_fraction * sizes.retain)
        ph.append(_train(label, s, f"{params.epochs} epoch on D_f ∪ D_r sample",
                         params.epochs * steps(rows, params.batch_size), params.batch_size,
                         forward_rows=2 * params.batch_size, forward_calls=2))
    elif method == "scrub":
        b_f, b_r = params.forget_batch_size, params.retain_batch_size
        ph.append(_train(label, s, "max-steps on D_f",
                         min(params.max_epochs, params.epochs) * steps(sizes.forget, b_f), b_f,
                         forward_rows=b_f, forward_calls=1))
        ph.append(_train(label, s, "min-steps on D_r", params.epochs * steps(sizes.retain, b_r),
                         b_r, forward_rows=b_r, forward_calls=1))
    elif method == "ssd":
        b = params.batch_size
        ph.append(_train(label, s, "importances over D_f and D",
                         steps(sizes.forget, b) + steps(sizes.train, b), b, "fp32"))
    elif method == "unsir":
        noise = params.noise_rows * sizes.classes_forgotten
        copies = max(1, round(params.noise_copies * sizes.share_forgotten))
        per_class = sizes.retain // max(1, sizes.classes_retained)
        retained = min(params.retain_per_class, per_class) * sizes.classes_retained
        ph.append(_train(label, s, "noise", params.noise_steps, noise, "fp32"))
        ph.append(_train(label, s, "impair and repair",
                         params.impair_epochs * steps(retained + copies * noise, params.batch_size)
                         + params.repair_epochs * steps(retained, params.batch_size),
                         params.batch_size))
    elif method == "deepclean":
        n = _rounds(method, s, params, bound)
        chunks = (steps(min(sizes.forget, params.fisher_forget_samples), params.fisher_chunk)
                  + steps(min(sizes.retain, params.fisher_retain_samples), params.fisher_chunk))
        ph.append(Phase(label, s, "Fisher diagonals (per-sample gradients)", chunks,
                        {"fisher": params.fisher_chunk}, {"fisher": 1.0}))
        take = math.ceil(params.finetune_fraction * sizes.retain)
        ph.append(_train(label, s, f"{n['attempts']} × {n['passes']} fine-tuning passes",
                         n["attempts"] * n["passes"] * steps(take, params.batch_size),
                         params.batch_size))
        checks = _monitor_rows(sizes, params.eval_samples, True) + 3 * params.eval_samples * (
            n["attempts"] * (n["passes"] + 2))
        ph.append(_forward(label, s, "monitor checks", checks, eval_rows(preset)))
    elif method == "feature-constraint":
        n = _rounds(method, s, params, bound)
        b = params.batch_size
        recover = min(params.recover_max_samples, math.ceil(params.recover_fraction * sizes.retain))
        per_epoch = max(steps(sizes.forget, b), steps(recover, b))
        ph.append(_train(label, s, f"{n['epochs']} forget epochs", n["epochs"] * per_epoch,
                         2 * b, train_calls=2, forward_rows=b, forward_calls=1))
        ph.append(_train(label, s, f"{n['repair']} repair epochs",
                         n["repair"] * steps(recover, b), b))
        checks = _monitor_rows(sizes, params.eval_samples, True) + 3 * params.eval_samples * (
            n["epochs"] + n["repair"] + (BISECT_SCORES if s != "class" else 0))
        ph.append(_forward(label, s, "monitor checks", checks, eval_rows(preset)))
    elif method == "projected-gradient":
        n = _rounds(method, s, params, bound)
        b = params.representation_batch_size
        sample = min(sizes.train, params.representation_samples)
        ph.append(Phase(label, s, "representation matrices", steps(sample, b) +
                        steps(sizes.forget, b), {"representation": b}, {"representation": 1.0},
                        eigh_flops=sum(9.0 * d ** 3 for d, _ in layers.values())))
        projection = sum(4.0 * out * d * d for d, out in layers.values())  # bound: k = d
        ph.append(_train(label, s, f"{n['epochs']} projected epochs on D_f",
                         n["epochs"] * steps(sizes.forget, params.batch_size), params.batch_size,
                         "fp32", matmul_flops=projection))
        ph.append(_train(label, s, "step sizing", n["attempts"], params.eval_samples, "fp32"))
        bisect = params.bisect_steps if s != "class" else 0
        checks = (_monitor_rows(sizes, params.eval_samples, True)
                  + 3 * params.eval_samples * (n["epochs"] + n["attempts"] * (bisect + 1)))
        ph.append(_forward(label, s, "monitor checks", checks, eval_rows(preset)))
    else:  # a plugin method: as a fine-tune of three epochs on D_r
        ph.append(_train(label, s, "unknown method: 3 epochs on D_r (assumed)",
                         3 * full(sizes.retain, r.batch_size), r.batch_size))
    return ph


def eval_rows(preset: Preset) -> int:
    """Rows per evaluation batch on the GPU (``eval_batch_size``)."""
    return max(GPU_EVAL_BATCH, 1)


def bench_phases(preset: Preset, shape: DataShape, *, bound: bool,
                 layers: dict[str, tuple[int, int]], scoring_seconds: float = 0.0
                 ) -> list[Phase]:
    """Every step ``lethe bench --preset NAME`` takes, by contender and scenario."""
    from worker.bench.runner import plan_contenders

    contenders = plan_contenders(preset, None)
    r, seeds = preset.recipe, len(preset.seeds)
    batches = shape.num_train // r.batch_size if shape.num_train > r.batch_size else 1
    phases = [_train("warm-up", "-", "4 steps", 4, r.batch_size),
              _train("original", "-", f"train {r.epochs} epochs on D, {seeds} seed(s)",
                     seeds * r.epochs * batches, r.batch_size),
              _forward("original", "-", "train and test accuracy",
                       seeds * (shape.num_train + shape.num_test), eval_rows(preset))]
    for scenario in preset.scenarios:
        sizes = Sizes.of(shape, scenario)
        scoring = (2 * sizes.forget + min(sizes.retain, DEFAULT_MAX_EVAL)
                   + min(sizes.test, DEFAULT_MAX_EVAL) + 3 * GATE_ROWS)
        phases.append(_forward("gate", scenario, "the original's outputs",
                               seeds * 3 * GATE_ROWS, eval_rows(preset)))
        for contender in contenders:
            params = METHODS.get(contender.method).Params.model_validate(
                contender.params_for(scenario))
            for phase in method_phases(contender.label, contender.method, params, scenario,
                                       sizes, preset, bound=bound, layers=layers):
                phase.steps *= seeds
                phase.eigh_flops *= seeds
                phases.append(phase)
            scores = _forward(contender.label, scenario, "scores and gate", seeds * scoring,
                              eval_rows(preset))
            scores.host_seconds = seeds * scoring_seconds
            phases.append(scores)
    return phases


def projected_widths(preset: Preset, shape: DataShape) -> dict[str, tuple[int, int]]:
    """Per projected layer within the matrix budget: (input width d, outputs)."""
    from worker.engine.methods.projected_gradient import projected_layers, within_budget

    params = METHODS.get("projected-gradient").Params.model_validate(
        preset.params_for("projected-gradient"))
    layers, _ = within_budget(projected_layers(_model(preset, shape)), params.max_matrix_mib)
    return {name: (layer.weight[0].numel(), layer.weight.shape[0])
            for name, layer in layers.items()}


# --- Time ------------------------------------------------------------------------------------

def phase_seconds(phase: Phase, profiles: dict[str, StepProfile],
                  gpu: GpuAssumptions) -> tuple[float, float]:
    """Estimated GPU seconds of ``phase``, and its FLOPs."""
    conv = matmul = 0.0
    launches = 0.0
    for kind, rows in phase.rows.items():
        if not rows:
            continue
        step = profiles[kind]
        conv += rows * (step.flops - step.matmul_flops) / max(1, step.rows)
        matmul += rows * step.matmul_flops / max(1, step.rows)
    for kind, calls in phase.calls.items():
        if calls and phase.rows.get(kind):
            launches += calls * profiles[kind].operators
    matmul += phase.matmul_flops
    per_step = max(conv / gpu.rate(phase.precision)
                   + matmul / (gpu.fp32_peak_tflops * gpu.matmul_share * 1e12),
                   launches * gpu.launch_us * 1e-6)
    flops = phase.steps * (conv + matmul) + phase.eigh_flops
    return (phase.steps * per_step + phase.eigh_flops / (gpu.eigh_tflops * 1e12)
            + phase.host_seconds), flops


def cpu_seconds(phase: Phase, profiles: dict[str, StepProfile]) -> float:
    """The same phase at the rate this CPU ran the profiled steps (eigh and the projection
    products at the representation step's rate)."""
    seconds = sum(rows * profiles[kind].cpu_seconds_per_row for kind, rows in phase.rows.items())
    seconds *= phase.steps
    extra = phase.steps * phase.matmul_flops + phase.eigh_flops
    if extra:
        rate = max((p.flops / p.cpu_seconds for p in profiles.values() if p.cpu_seconds),
                   default=1e10)
        seconds += extra / rate
    return seconds + phase.host_seconds


@dataclass
class Estimate:
    preset: str
    shape: DataShape
    assumptions: GpuAssumptions
    profiles: dict[str, StepProfile]
    typical: list[tuple[Phase, float, float]]  # phase, GPU seconds, FLOPs
    bound: list[tuple[Phase, float, float]]
    data_seconds: dict[str, float] = field(default_factory=dict)  # measured on this CPU
    scoring_seconds: float = 0.0  # per trial, the membership attacks' fits (measured)
    cpu_hours: float = 0.0
    torch_threads: int = 1
    recipe_batch: int = 1
    caveat: str = CAVEAT

    def total_seconds(self, which: str = "typical") -> float:
        """Start-up, the data's first decode (when timed) and every phase."""
        phases = self.typical if which == "typical" else self.bound
        return (self.assumptions.startup_s + self.data_seconds.get("first", 0.0)
                + sum(seconds for _, seconds, _ in phases))

    @property
    def minutes(self) -> float:
        return self.total_seconds("typical") / 60

    @property
    def bound_minutes(self) -> float:
        return self.total_seconds("bound") / 60

    def epoch_seconds(self) -> float:
        """GPU seconds of one training epoch of the recipe, at the assumptions."""
        batch = self.recipe_batch
        phase = _train("epoch", "-", "one epoch", _full_batches(self.shape.num_train, batch),
                       batch)
        return phase_seconds(phase, self.profiles, self.assumptions)[0]

    def by_label(self, which: str = "typical") -> dict[str, float]:
        totals: dict[str, float] = {}
        for phase, seconds, _ in (self.typical if which == "typical" else self.bound):
            totals[phase.label] = totals.get(phase.label, 0.0) + seconds
        return totals

    def as_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "caveat": self.caveat,
                "estimated_minutes": round(self.minutes, 2),
                "bound_minutes": round(self.bound_minutes, 2),
                "assumptions": asdict(self.assumptions), "data": asdict(self.shape),
                "profile": {k: asdict(v) for k, v in self.profiles.items()},
                "data_seconds": self.data_seconds, "cpu_hours": round(self.cpu_hours, 2),
                "scoring_seconds_per_trial": round(self.scoring_seconds, 2),
                "by_contender_seconds": {k: round(v, 1) for k, v in self.by_label().items()}}


def estimate_preset(preset: Preset | str, *, shape: DataShape | None = None,
                    assumptions: GpuAssumptions = H100, profile_rows: int | None = 32,
                    repeats: int = 2, time_data: bool = False,
                    cache_dir: Path | None = None) -> Estimate:
    """Estimate ``preset``'s time on a GPU from a CPU profile (an estimate, not a
    measurement; see the module's doc). ``time_data`` also decodes the preset's data into a
    fresh ``cache_dir`` and times it and a cached load (CPU work on any machine)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    shape = shape or data_shape(preset)
    methods = {c.method for c in _contenders(preset)}
    kinds = ({"fisher"} if "deepclean" in methods else set()) | (
        {"representation"} if "projected-gradient" in methods else set())
    threads = preset.torch_threads or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng():
            profiles = profile(preset, shape, profile_rows=profile_rows, repeats=repeats,
                               kinds=kinds)
            layers = projected_widths(preset, shape) if "projected-gradient" in methods else {}
        scoring = time_scoring(shape)
    finally:
        torch.set_num_threads(before)
    results = {}
    for which in ("typical", "bound"):
        results[which] = [(phase, *phase_seconds(phase, profiles, assumptions))
                          for phase in bench_phases(preset, shape, bound=which == "bound",
                                                    layers=layers, scoring_seconds=scoring)]
    cpu = sum(cpu_seconds(phase, profiles) for phase, _, _ in results["typical"])
    data = _time_data(preset, cache_dir) if time_data else {}
    return Estimate(preset.name, shape, assumptions, profiles, results["typical"],
                    results["bound"], data, scoring, cpu / 3600, threads,
                    preset.recipe.batch_size)


def time_scoring(shape: DataShape) -> float:
    """Seconds this CPU takes for the membership attacks of one trial's scores (Lethe's
    logistic regression and SalUn's RBF SVC, scikit-learn on the host whatever the device),
    on logits shaped like a random-10 trial's: members more confident than non-members."""
    from worker.engine.metrics import mia_efficacy_from_logits, salun_mia_efficacy_from_logits

    sizes = Sizes.of(shape, "random-10")
    generator = torch.Generator().manual_seed(0)

    def logits(rows: int, boost: float) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(shape.num_classes, (rows,), generator=generator)
        out = 2 * torch.randn(rows, shape.num_classes, generator=generator)
        out[torch.arange(rows), y] += boost
        return out, y

    forget, retain = logits(sizes.forget, 6.0), logits(min(sizes.retain, DEFAULT_MAX_EVAL), 6.0)
    test = logits(min(sizes.test, DEFAULT_MAX_EVAL), 3.0)
    started = time.perf_counter()
    mia_efficacy_from_logits(retain, test, forget, seed=0)
    salun_mia_efficacy_from_logits(retain, test, forget, seed=0)
    return time.perf_counter() - started


def _contenders(preset: Preset):
    from worker.bench.runner import plan_contenders

    return plan_contenders(preset, None)


def _time_data(preset: Preset, cache_dir: Path | None) -> dict[str, float]:
    import tempfile

    from worker.bench.data import load_bench_data

    with tempfile.TemporaryDirectory(dir=cache_dir) as fresh:
        started = time.perf_counter()
        load_bench_data(preset.dataset, Path(fresh))
        first = time.perf_counter() - started
        started = time.perf_counter()
        load_bench_data(preset.dataset, Path(fresh))
        return {"first": round(first, 1), "cached": round(time.perf_counter() - started, 1)}


# --- Report ----------------------------------------------------------------------------------

def _hours(hours: float) -> str:
    return f"{hours:.0f} hours" if hours >= 2 else f"{hours * 60:.0f} minutes"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def render_markdown(estimate: Estimate, cpu_name: str | None = None) -> str:
    e, a = estimate, estimate.assumptions
    name = e.preset
    lines = [
        f"# `{name}` preset: estimated GPU time ({CAVEAT})", "",
        f"No GPU was lent to the session that wrote this, so nothing here was measured on "
        f"one. Estimated wall time of `lethe bench --preset {name}` on {a.gpu}: "
        f"**about {e.minutes:.1f} minutes** ({CAVEAT}); at the methods' caps on rounds "
        f"(the bound), {e.bound_minutes:.1f} minutes.", "",
        "On a machine with a GPU, measure it with the one command:", "",
        "```", f"lethe bench --preset {name} --out benchmarks/{name}", "```", "",
        "(`make bench PRESET=" + name + "` writes to `bench-out/" + name + "` instead.) "
        "Without a GPU the same command runs on the CPU: the engine falls back to it, "
        f"and this CPU would take about {_hours(e.cpu_hours)} (from the profile below).", "",
        "## Estimate by contender", "",
        "Seconds on the GPU machine: GPU time at the assumptions below, plus each trial's "
        "membership attacks, which run on the host CPU (as measured on this one).", "",
        "| contender | seconds (typical rounds) | seconds (bound) |",
        "|---|---|---|",
    ]
    bound = e.by_label("bound")
    for label, seconds in e.by_label("typical").items():
        lines.append(f"| {label} | {seconds:.1f} | {bound.get(label, 0.0):.1f} |")
    data = e.data_seconds.get("first", 0.0)
    timed = "measured on this CPU" if e.data_seconds else "not timed"
    lines += [f"| start-up (assumed) | {a.startup_s:.0f} | {a.startup_s:.0f} |",
              f"| decoding and loading the data ({timed}) | {data:.1f} | {data:.1f} |",
              f"| **total** | **{e.total_seconds():.0f}** ({_minutes(e.total_seconds())}) | "
              f"**{e.total_seconds('bound'):.0f}** ({_minutes(e.total_seconds('bound'))}) |",
              ""]
    if e.data_seconds:
        lines += [f"The data's time is a fresh machine's: decoding the archive into the bench "
                  f"cache and loading it, {e.data_seconds['first']:.0f} s on this CPU (CPU work "
                  f"a GPU does not speed up); from the cache it takes "
                  f"{e.data_seconds['cached']:.0f} s.", ""]
    shape = e.shape
    lines += [
        "## How it was computed", "",
        f"Data: {shape.num_train:,} training and {shape.num_test:,} test rows of shape "
        f"{list(shape.input_shape)}, {shape.num_classes} classes. Each contender's steps are "
        "counted from the data's size, the recipe and the method's parameters "
        f"(`worker/bench/estimate.py`). At these assumptions one epoch of the recipe "
        f"({e.shape.num_train:,} rows at batch {e.recipe_batch}) takes "
        f"{e.epoch_seconds():.1f} s of GPU time. Methods that stop by a rule take the most "
        "rounds the "
        "zoo's ResNet-18 pair ran on any seed (`benchmarks/zoo/results.json`), the bound "
        "their parameters' caps. Every step's FLOPs and launched operators come from the CPU "
        "profile; its GPU time is the longer of FLOPs at the sustained rate and operators at "
        "the launch cost. Assumptions (stated, not measured):", ""]
    lines += [f"- {line}" for line in a.describe()]
    lines += ["", "## CPU profile (measured)", "",
              f"On {cpu_name or 'this CPU'}, {e.torch_threads} torch thread(s), "
              f"torch {torch.__version__}; FLOPs from "
              "`torch.utils.flop_counter.FlopCounterMode` (a multiply-add is two).", "",
              "| step | rows | GFLOP per row | operators per call | CPU seconds per call | "
              "CPU GFLOP/s |", "|---|---|---|---|---|---|"]
    for p in e.profiles.values():
        rate = p.flops / p.cpu_seconds / 1e9 if p.cpu_seconds else 0.0
        lines.append(f"| {p.kind} | {p.rows} | {p.flops_per_row / 1e9:.3f} | {p.operators} | "
                     f"{p.cpu_seconds:.3f} | {rate:.1f} |")
    lines += ["", f"The membership attacks of one trial's scores (scikit-learn's logistic "
              f"regression and SalUn's RBF SVC, on the host whatever the device) took "
              f"{e.scoring_seconds:.1f} s; the estimate counts that for every trial."]
    lines += ["", "Steps: `train` is one SGD step of the recipe (forward, backward, update); "
              "`forward` an evaluation pass; `fisher` one chunk of DeepClean's per-sample "
              "gradients; `representation` one batch of projected-gradient's matrices "
              "(forward plus the float32 products of its hooks).", "",
              f"Regenerate: `python -m worker.bench.estimate --preset {name} --time-data "
              f"--out benchmarks/{name}/ESTIMATE.md`.", ""]
    return "\n".join(lines)


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cores = torch.get_num_threads()
                return f"{line.split(':', 1)[1].strip()} ({cores} threads available to torch)"
    except OSError:
        return None
    return None


def write_estimate(estimate: Estimate, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(estimate, _cpu_name()))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.bench.estimate",
        description=f"Estimate a bench preset's GPU time from a CPU profile ({CAVEAT}).")
    parser.add_argument("--preset", default="gpu-quick")
    parser.add_argument("--out", type=Path, default=None, help="Write the markdown here.")
    parser.add_argument("--profile-rows", type=int, default=32,
                        help="Rows per profiled step (at most the preset's batch size).")
    parser.add_argument("--time-data", action="store_true",
                        help="Also decode the preset's data (into a temporary cache) and "
                             "time it.")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="Parent of the temporary cache --time-data decodes into "
                             "(default: the system's temporary directory).")
    args = parser.parse_args(argv)
    estimate = estimate_preset(args.preset, profile_rows=args.profile_rows,
                               time_data=args.time_data, cache_dir=args.cache_dir)
    print(f"{args.preset}: about {estimate.minutes:.1f} minutes on {estimate.assumptions.gpu} "
          f"(bound {estimate.bound_minutes:.1f}); {CAVEAT}.")
    for label, seconds in estimate.by_label().items():
        print(f"  {label:28s} {seconds:8.1f} s")
    if args.out:
        print(f"wrote {write_estimate(estimate, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
