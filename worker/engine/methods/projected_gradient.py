"""Projected-gradient unlearning: ascend on D_f only along directions the retained data does not
use, so retained behaviour is (nearly) untouched and the retain data is never read.

Per conv/linear layer the retained data's input space is summarised by R_l = Σ x xᵀ over the
layer's inputs (conv: kernel-sized patches). Its leading eigenvectors span the Core Gradient
Space; weight gradients are projected onto its orthogonal complement before each step.

Random forgetting stops at the accuracy a model retrained without D_f would score on D_f,
estimated from the base model alone (see ``retrained_forget_level``), and the last epoch is
cut short by bisection so the stop lands on that level rather than an epoch past it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from worker.engine.methods._base import (
    MethodParams,
    ProgressFn,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    no_progress,
    register_method,
)
from worker.engine.methods._common import (
    EpochScore,
    ForgetMonitor,
    accuracy,
    evaluating,
    freeze_norm_statistics,
    only_these_trainable,
    progress_span,
    random_rows,
    retained_class_test_rows,
    working_copy,
)
from worker.engine.training import iterate_batches, seeded_generator

ProjectedLayer = nn.Linear | nn.Conv2d
# Bound on the float64 patch rows materialised at once while accumulating R (128 MiB).
_ROW_ELEMENTS_PER_CHUNK = 2**24
# Cached with the matrices: the base model's accuracy (percent) on its retained training rows,
# so chained requests can place the stopping level without reading D_r. Not a module name.
RETAIN_ACCURACY_KEY = "@retain_accuracy"
# Rows of the test split (and of D_f) that place the stopping level: every row up to this.
_LEVEL_ROWS = 10_000


class Params(MethodParams):
    gamma: float = Field(
        0.9, gt=0, lt=1,
        description="Share of the retained data's singular-value mass (cumsum(S)/ΣS) whose "
                    "directions are protected when scattered samples are forgotten. Higher "
                    "protects retained accuracy more and forgets more slowly (the paper: 0.95, "
                    "0.9 for AllCNN-like nets; Lethe's sweeps, benchmarks/tuning/, chose 0.9 "
                    "with a larger step).",
    )
    class_gamma: float = Field(
        0.95, gt=0, lt=1,
        description="gamma for requests that forget whole classes. A class's inputs have "
                    "directions of their own, so it is forgotten within a few epochs at 0.95; "
                    "at 0.9 the same steps also cost the retained classes' accuracy "
                    "(benchmarks/tuning/, sweep 7).",
    )
    lr_start: float = Field(
        6.0, gt=0, le=10,
        description="SGD learning rate of the first epoch (the paper: 0.05, which barely moved "
                    "a small CNN in 20 epochs: projected steps are short).",
    )
    lr_end: float = Field(
        3.0, gt=0, le=10,
        description="Learning rate reached after max_epochs (exponential decay).",
    )
    max_epochs: int = Field(
        30, ge=1, le=1000,
        description="Upper bound on passes over D_f (the paper: 100); the stopping rule "
                    "usually ends the descent within a few.",
    )
    batch_size: int = Field(128, ge=1, le=8192, description="Forget-set samples per step.")
    offset: float = Field(
        0.05, ge=0, le=1,
        description="Offset in −log(1 − (p_y − offset)): how far below certainty the true-class "
                    "probability is pushed before the loss flattens.",
    )
    entropy_weight: float = Field(
        0.1, ge=0, le=10,
        description="Weight of Σ p log p, which pushes forget outputs towards uniform.",
    )
    level_exponent: float = Field(
        1.0, ge=0, le=5,
        description="Random forgetting stops once forget accuracy reaches what a model retrained "
                    "without D_f is expected to score on it: 100 − (100 − L)·(|D|/|D_r|)^α. "
                    "The retrained model saw fewer rows, and scores D_f under held-out rows; "
                    "α = 1 fits both on the cpu bench preset (benchmarks/tuning/, sweep 7), "
                    "where a learning curve alone would give about 0.4 (0: stop at L itself).",
    )
    difficulty_weight: float = Field(
        1.0, ge=0, le=5,
        description="L = test accuracy + w·(forget accuracy − retain accuracy) of the base "
                    "model: a forget set it finds harder than the rest of its training data "
                    "stays harder for a retrained model (0: L is the test accuracy).",
    )
    bisect_steps: int = Field(
        4, ge=0, le=20,
        description="Random forgetting: once an epoch crosses the stopping level, halve the "
                    "interval between its start and end weights this often and keep the blend "
                    "closest to the level (0: keep the closer of the two, as the paper does).",
    )
    max_retain_drop: float = Field(
        5.0, ge=0, le=100,
        description="Stop, and undo the last epoch, once test accuracy (on the rows of retained "
                    "classes after class forgetting) falls more than this many points below "
                    "its starting value.",
    )
    class_target_acc: float = Field(
        1.0, ge=0, le=100,
        description="Class forgetting: stop once forget accuracy (percent) is at most this.",
    )
    eval_samples: int = Field(
        500, ge=10, le=100_000,
        description="Forget and test rows sampled for the per-epoch stopping check.",
    )
    representation_samples: int = Field(
        1000, ge=1, le=10_000_000,
        description="Rows of D that estimate its representation matrices on a first request "
                    "(the sum scaled to all of D). The leading directions settle long before "
                    "every row is seen, and these products are most of a first request's time.",
    )
    representation_batch_size: int = Field(
        128, ge=1, le=8192,
        description="Batch size while accumulating the representation matrices.",
    )


# --- Representation matrices and their Core Gradient Space ------------------------------------

def projected_layers(model: nn.Module) -> dict[str, ProjectedLayer]:
    """The conv and linear layers whose weights get projected updates (grouped convs excluded:
    their weight does not act on the whole unfolded patch)."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        or (isinstance(module, nn.Conv2d) and module.groups == 1)
    }


def _input_rows(layer: ProjectedLayer, x: torch.Tensor) -> torch.Tensor:
    """The vectors the layer's weight multiplies, one per row, laid out like weight.flatten(1)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features)
    padding = layer.padding
    if isinstance(padding, str) or layer.padding_mode != "zeros":
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding,
                       stride=layer.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _accumulate_hook(total: torch.Tensor):
    def hook(layer: ProjectedLayer, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
        x = inputs[0]
        channels = output.shape[1] if isinstance(layer, nn.Conv2d) else output.shape[-1]
        rows_per_sample = output.numel() // (len(x) * channels)
        samples = max(1, _ROW_ELEMENTS_PER_CHUNK // (rows_per_sample * total.shape[0]))
        for chunk in x.split(samples):
            # Products in float32 (faster on CPUs), sums across chunks in float64.
            rows = _input_rows(layer, chunk).float()
            total.add_((rows.T @ rows).double())

    return hook


@torch.no_grad()
def representation_matrices(
    model: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 128,
    progress: ProgressFn = no_progress,
) -> dict[str, torch.Tensor]:
    """R_l = Σ x xᵀ over the inputs ``x`` for every projected layer l, float64 on the CPU.

    Sums, not means, so matrices of disjoint sets add up: R(D_r) = R(D) − R(D_f).
    """
    layers = projected_layers(model)
    totals = {name: torch.zeros(layer.weight[0].numel(), layer.weight[0].numel(),
                                dtype=torch.float64, device=device)
              for name, layer in layers.items()}
    handles = [layer.register_forward_hook(_accumulate_hook(totals[name]))
               for name, layer in layers.items()]
    try:
        with evaluating(model):
            batches = -(-len(x) // batch_size)
            for done, (xb, _) in enumerate(iterate_batches(x, x, batch_size, shuffle=False), 1):
                model(xb.to(device))
                progress(done / batches)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total.cpu() for name, total in totals.items()}


def core_gradient_bases(
    matrices: dict[str, torch.Tensor], gamma: float, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Per layer, the orthonormal d×k basis U_k of the directions the data uses: the leading
    eigenvectors of R whose cumulative share of S = √eigenvalue stays ≤ gamma."""
    bases = {}
    for name, matrix in matrices.items():
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix.to(device))
        # eigh sorts ascending; subtracting R^f can leave tiny negative round-off values.
        singular = eigenvalues.flip(0).clamp_min(0).sqrt()
        total = singular.sum()
        kept = int((singular.cumsum(0) / total <= gamma).sum()) if total > 0 else 0
        bases[name] = eigenvectors.flip(1)[:, :kept].float()
    return bases


def project_out(gradient: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """G − G·U·Uᵀ with G reshaped out × in: the part of the step the protected inputs ignore."""
    flat = gradient.reshape(len(gradient), -1)
    return (flat - (flat @ basis) @ basis.T).view_as(gradient)


def unlearning_loss(logits: torch.Tensor, labels: torch.Tensor, offset: float = 0.05,
                    entropy_weight: float = 0.2) -> torch.Tensor:
    """mean(−log(1 − (p_y − offset)) + entropy_weight·Σ_c p_c log p_c)."""
    log_p = logits.log_softmax(1)
    p = log_p.exp()
    p_true = p.gather(1, labels[:, None]).squeeze(1)
    push_down = -torch.log((1 - (p_true - offset)).clamp_min(1e-6))
    negative_entropy = (p * log_p).sum(1)
    return (push_down + entropy_weight * negative_entropy).mean()


# --- The method ----------------------------------------------------------------------------

@register_method
class ProjectedGradient(UnlearningMethod):
    name = "projected-gradient"
    summary = (
        "Gradient ascent on the forget set, projected orthogonally to the retained data's "
        "input space per layer; needs only the forget set once the matrices are cached."
    )
    reference = (
        "Hoang, Rana, Gupta, Venkatesh. Learn to Unlearn for Deep Neural Networks: Minimizing "
        "Unlearning Interference with Gradient Projection. WACV 2024. arXiv:2312.04095."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        model = working_copy(task)
        layers = projected_layers(model)
        reduced, source, retain_acc = _retained_matrices(model, layers, task, params)
        gamma = params.class_gamma if task.data.forget_classes else params.gamma
        bases = core_gradient_bases(reduced, gamma, task.device)
        descent = _Descent(model, layers, bases, task, params, retain_acc)
        descent.run(progress_span(task.progress, 0.1 if source == "cached" else 0.4, 1.0))
        task.progress(1.0)
        metrics = {
            "state_source": source,
            "gamma": gamma,
            "kept_dimensions": {name: [basis.shape[1], basis.shape[0]]
                                for name, basis in bases.items()},
            **descent.summary(),
        }
        state = dict(reduced)
        if retain_acc is not None:
            # The projected steps barely move retained accuracy, so the next request reuses it.
            state[RETAIN_ACCURACY_KEY] = torch.tensor([retain_acc], dtype=torch.float64)
        return UnlearningOutcome(model=model.eval(), metrics=metrics, state=state)


def retrained_forget_level(*, test_acc: float, forget_acc: float, retain_acc: float | None,
                           retained: int, forgotten: int, exponent: float,
                           difficulty_weight: float) -> float:
    """Accuracy (percent) on D_f expected of a model retrained on D_r alone, from the base model.

    D_f is unseen data to such a model, so start from the test accuracy, shifted by how much
    harder (or easier) the base model finds D_f than D_r. A model trained on fewer rows errs
    more: scale the error by (|D|/|D_r|)^exponent, a power-law learning curve.
    """
    level = test_acc
    if retain_acc is not None:
        level += difficulty_weight * (forget_acc - retain_acc)
    error = min(max(100.0 - level, 0.0), 100.0)
    return 100.0 - error * ((retained + forgotten) / retained) ** exponent


def _retained_matrices(model: nn.Module, layers: dict[str, ProjectedLayer], task: UnlearningTask,
                       params: Params) -> tuple[dict[str, torch.Tensor], str, float | None]:
    """R − R^f per layer, R from the cache when it fits this model (then no retained row is
    read), else computed over retain ∪ forget. Also says where R came from, and gives the base
    model's accuracy on its retained rows when known (None: a cache from before it was kept)."""
    data = task.data
    cached = _usable_state(task.state, layers)
    if cached is not None:
        full, source, forget_phase = cached, "cached", (0.0, 0.05)
        retain_acc = _cached_retain_accuracy(task.state)
    else:
        full = _estimated_matrices(model, data.known_idx(), task, params)
        retain_acc = _retain_accuracy(model, task, params)
        source = "computed" if task.state is None else "recomputed: cached state did not fit"
        forget_phase = (0.3, 0.35)
    forgotten = representation_matrices(
        model, data.x_train[data.forget_idx], device=task.device,
        batch_size=params.representation_batch_size,
        progress=progress_span(task.progress, *forget_phase))
    return {name: full[name] - forgotten[name] for name in layers}, source, retain_acc


def _estimated_matrices(model: nn.Module, rows: torch.Tensor, task: UnlearningTask,
                        params: Params) -> dict[str, torch.Tensor]:
    """R over ``rows``, from a random sample of at most representation_samples of them scaled
    up to the whole (exact when the sample is every row)."""
    generator = seeded_generator(params.seed)
    sample = rows[random_rows(len(rows), params.representation_samples, generator).sort().values]
    matrices = representation_matrices(
        model, task.data.x_train[sample], device=task.device,
        batch_size=params.representation_batch_size,
        progress=progress_span(task.progress, 0.0, 0.3))
    scale = len(rows) / max(1, len(sample))
    return {name: matrix * scale for name, matrix in matrices.items()}


def _retain_accuracy(model: nn.Module, task: UnlearningTask, params: Params) -> float:
    """The base model's accuracy (percent) on its retained rows, every one up to _LEVEL_ROWS:
    its error goes straight into the stopping level, and a 1,000-row sample's (about ±1.4
    points) cost as much gap as the level's other terms put together."""
    rows = task.data.retain_idx
    rows = rows[_level_rows(len(rows), seeded_generator(params.seed))]
    return accuracy(model, task.data.x_train[rows], task.data.y_train[rows], task.device)


def _level_rows(count: int, generator: torch.Generator) -> torch.Tensor | slice:
    """Which of ``count`` rows place the stopping level: all of them up to _LEVEL_ROWS, else
    that many drawn at random."""
    return slice(None) if count <= _LEVEL_ROWS else random_rows(count, _LEVEL_ROWS, generator)


def _usable_state(state: dict[str, torch.Tensor] | None,
                  layers: dict[str, ProjectedLayer]) -> dict[str, torch.Tensor] | None:
    """The cached matrices when they describe exactly this model's layers, else None."""
    if state is None:
        return None
    matrices = {name: matrix for name, matrix in state.items() if name != RETAIN_ACCURACY_KEY}
    if set(matrices) != set(layers):
        return None
    for name, layer in layers.items():
        width = layer.weight[0].numel()
        if tuple(matrices[name].shape) != (width, width):
            return None
    return {name: matrix.to(torch.float64) for name, matrix in matrices.items()}


def _cached_retain_accuracy(state: dict[str, torch.Tensor]) -> float | None:
    value = state.get(RETAIN_ACCURACY_KEY)
    return None if value is None or value.numel() != 1 else float(value.item())


class _Descent:
    """The projected SGD loop: stops once D_f is forgotten (or test accuracy drops too far),
    then settles within the last epoch."""

    def __init__(self, model: nn.Module, layers: dict[str, ProjectedLayer],
                 bases: dict[str, torch.Tensor], task: UnlearningTask, params: Params,
                 retain_acc: float | None):
        self.model, self.task, self.params = model, task, params
        self.retain_acc = retain_acc
        self.weights = [(layers[name].weight, basis) for name, basis in bases.items()]
        self.generator = seeded_generator(params.seed)
        self.monitor = ForgetMonitor.from_task(task, params.eval_samples, self.generator)
        self.history: list[EpochScore] = []
        self.level: float | None = None  # random forgetting's stopping level, percent
        self.stop_reason = "max-epochs"
        self.epochs_run = 0
        self.kept_epoch: float = 0  # fractional when the last epoch was cut short

    def run(self, progress: ProgressFn) -> None:
        start = self.monitor.score(self.model, 0)
        self.history.append(start)
        if not self.monitor.class_forgetting:
            self.level = self._random_forgetting_level(start)
        if self._forgotten(start):
            self.stop_reason = "already-forgotten"
            return
        data = self.task.data
        forget_x, forget_y = data.x_train[data.forget_idx], data.y_train[data.forget_idx]
        decay = (self.params.lr_end / self.params.lr_start) ** (1 / self.params.max_epochs)
        with only_these_trainable(self.model, [weight for weight, _ in self.weights]):
            for epoch in range(1, self.params.max_epochs + 1):
                previous = self._current()
                self._epoch(forget_x, forget_y, self.params.lr_start * decay ** (epoch - 1))
                self.history.append(self.monitor.score(self.model, epoch))
                self.epochs_run = self.kept_epoch = epoch
                progress(epoch / self.params.max_epochs)
                reason = self._stop_reason()
                if reason is not None:
                    self.stop_reason = reason
                    self._settle(previous)
                    break

    def _random_forgetting_level(self, start: EpochScore) -> float:
        data = self.task.data
        test_x, test_y = retained_class_test_rows(data)
        rows = _level_rows(len(test_x), self.generator)
        return retrained_forget_level(
            test_acc=accuracy(self.model, test_x[rows], test_y[rows], self.task.device),
            forget_acc=start.forget_acc, retain_acc=self.retain_acc,
            retained=len(data.retain_idx), forgotten=len(data.forget_idx),
            exponent=self.params.level_exponent,
            difficulty_weight=self.params.difficulty_weight)

    def _epoch(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        self.model.train()
        freeze_norm_statistics(self.model)
        device = self.task.device
        for xb, yb in iterate_batches(x, y, self.params.batch_size, shuffle=True,
                                      generator=self.generator):
            self.model.zero_grad(set_to_none=True)
            logits = self.model(xb.to(device))
            unlearning_loss(logits, yb.to(device), self.params.offset,
                            self.params.entropy_weight).backward()
            with torch.no_grad():
                for weight, basis in self.weights:
                    weight -= lr * project_out(weight.grad, basis)

    def _forgotten(self, score: EpochScore) -> bool:
        return self.monitor.forgotten(score, self.params.class_target_acc, self.level)

    def _stop_reason(self) -> str | None:
        start, current = self.history[0], self.history[-1]
        if self._forgotten(current):
            return "forgotten"
        # Against the starting test accuracy: ascent that damages the whole model lowers the
        # current one too, and chasing it would run the model into the ground.
        if start.test_acc - current.test_acc > self.params.max_retain_drop:
            return "retain-drop"
        return None

    def _settle(self, previous: list[torch.Tensor]) -> None:
        """After a retain drop, undo the last epoch. After random forgetting, keep the point of
        the last epoch whose forget accuracy is closest to the level: an epoch moves it by
        several points, as much as the level's own precision."""
        if self.stop_reason == "retain-drop":
            self._restore(previous)
            self.kept_epoch -= 1
        elif self.stop_reason == "forgotten" and self.level is not None:
            self._bisect(previous)

    @torch.no_grad()
    def _bisect(self, before: list[torch.Tensor]) -> None:
        after = self._current()
        tried = {0.0: self.history[-2].forget_acc, 1.0: self.history[-1].forget_acc}
        low, high = 0.0, 1.0
        for _ in range(self.params.bisect_steps):
            middle = (low + high) / 2
            self._blend(before, after, middle)
            tried[middle] = self.monitor.forget_accuracy(self.model)
            if tried[middle] <= self.level:
                high = middle
            else:
                low = middle
        # Ties go to the later point, as the paper keeps the last epoch unless the one before
        # is strictly closer.
        share = min(tried, key=lambda point: (abs(tried[point] - self.level), -point))
        self._blend(before, after, share)
        self.kept_epoch = self.epochs_run - 1 + share
        if 0.0 < share < 1.0:  # test accuracy is not measured there: the level needs none
            self.history.append(EpochScore(self.kept_epoch, tried[share], None))

    def _current(self) -> list[torch.Tensor]:
        return [weight.detach().clone() for weight, _ in self.weights]

    @torch.no_grad()
    def _restore(self, saved: list[torch.Tensor]) -> None:
        for (weight, _), value in zip(self.weights, saved, strict=True):
            weight.copy_(value)

    @torch.no_grad()
    def _blend(self, before: list[torch.Tensor], after: list[torch.Tensor], share: float) -> None:
        """Weights at ``share`` of the way from ``before`` to ``after`` (0: before)."""
        for (weight, _), start, end in zip(self.weights, before, after, strict=True):
            weight.copy_(torch.lerp(start, end, share))

    def summary(self) -> dict:
        return {
            "stop_reason": self.stop_reason,
            "stop_level": None if self.level is None else round(self.level, 2),
            "base_retain_accuracy": self.retain_acc,
            "epochs_run": self.epochs_run,
            "kept_epoch": round(self.kept_epoch, 4),
            "history": [score.as_dict() for score in self.history],
        }
