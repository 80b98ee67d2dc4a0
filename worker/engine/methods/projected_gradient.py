"""Projected-gradient unlearning: ascend on D_f only along directions the retained data does not
use, so retained behaviour is (nearly) untouched and the retain data is never read.

Per conv/linear layer the retained data's input space is summarised by R_l = Σ x xᵀ over the
layer's inputs (conv: kernel-sized patches). Its leading eigenvectors span the Core Gradient
Space; weight gradients are projected onto its orthogonal complement before each step. After
each request the reduced R_l is cached with the new version, so a chain of requests never
reads D again. All of this, the loss and the plain SGD without momentum are the paper's.

Lethe's additions (the stopping and step-size logic is shared, in ``_monitor.py``):

- the step is sized to the model: the first epoch's learning rate moves the projected
  weights by ``step_share`` of their norm (the paper's fixed 0.05 barely moved a small CNN;
  the fixed 6 → 3 Lethe once tuned on that CNN forgot no class of a small MLP before its
  guard stopped it); it then decays exponentially, as in the paper;
- an epoch that costs more utility than the acceptance gate allows is undone and the step
  halved; an epoch that barely moves forget accuracy doubles it; a descent that stalls keeps
  its best epoch, or, where the gate's rows refuse that epoch's utility, the farthest blend
  towards the base weights that they confirm;
- random forgetting stops where a model retrained without D_f is expected to score on it
  (the test accuracy shifted by D_f's difficulty for the base model and along a learning
  curve, kept inside the gate's window), bisecting the last epoch onto that level; a class
  stops once under the gate's limit with room for noise;
- when the descent at the paper's γ ends short of both its target and the gate's window, it
  starts again from the base weights at a lower γ (``gamma_floor``, ``gamma_step``);
- whole classes: the classifier rows of the forgotten classes step along the raw gradient
  (``free_class_rows``): they only set those classes' own logits, which should fall;
- utility is watched on held-out (test) rows, and on a D_r sample only when a first request
  reads D for the matrices anyway; a chained request, from cached matrices, never reads D_r
  (half the share of held-out rows it loses stands in for the retain accuracy it cannot see;
  the base model's retain accuracy is cached with the matrices for the level).

Any family: a linear layer applied token by token (a transformer's attention and MLP
projections, ``B×T×d`` inputs) sums the outer products over every token of every row, so R_l
is d×d whatever the sequence length; a convolution sums over its patches. The memory is the
matrices: Σ_l d_l² float64 values, held while they are estimated, again as their
eigenvectors during the descent, and cached with every version. A base-size transformer
(BERT-base or ViT-B/16: 12 layers of four 768-input and one 768-input plus one 3072-input
projections, and the head) has 149.8M such values, 1,143 MiB of matrices (about 2.9 GiB at
the peak, eigenvectors and float32 bases included); a width-64 ResNet-18 704 MiB; the zoo's
MLPs and narrow CNNs a few MiB. ``max_matrix_mib`` caps it: the widest layers beyond the
cap are left out (their weights do not change) and named in the job's metrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from worker.engine.architectures import classification_head
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
    evaluating,
    freeze_norm_statistics,
    only_these_trainable,
    progress_span,
    random_rows,
    working_copy,
)
from worker.engine.methods._monitor import (
    Monitor,
    Run,
    Weights,
    descend,
    relative_lr,
)
from worker.engine.training import iterate_batches, seeded_generator

ProjectedLayer = nn.Linear | nn.Conv2d
# Bound on the float64 patch rows materialised at once while accumulating R (128 MiB).
_ROW_ELEMENTS_PER_CHUNK = 2**24
# Cached with the matrices: the base model's accuracy (percent) on its retained training rows,
# so chained requests can place the stopping level without reading D_r. Not a module name.
RETAIN_ACCURACY_KEY = "@retain_accuracy"
# lr_end / lr_start when the schedule is not given: the paper decays its rate exponentially.
DEFAULT_DECAY = 0.5


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
    gamma_floor: float = Field(
        0.8, gt=0, lt=1,
        description="When the descent at gamma (class_gamma) ends neither at its target nor "
                    "inside the acceptance gate's window, it starts again from the base weights "
                    "with gamma_step less, down to this, while each attempt gets closer. The "
                    "paper's γ suits conv nets; MLPs on raw inputs often do better lower "
                    "(benchmarks/tuning/self-calibration/).",
    )
    gamma_step: float = Field(
        0.05, gt=0, lt=1, description="How much lower each further attempt's gamma is.")
    free_class_rows: bool = Field(
        True,
        description="Class forgetting: step the classifier rows of the forgotten classes along "
                    "the raw gradient, unprojected (false: project every row, as the paper).",
    )
    step_share: float = Field(
        0.05, gt=0, le=1,
        description="Size of the first epoch's steps when lr_start is not given: the learning "
                    "rate at which one step along the projected forget-loss gradient moves the "
                    "projected weights by this share of their norm. Halved after an epoch that "
                    "costs too much held-out accuracy, doubled after one that barely forgets.",
    )
    lr_start: float | None = Field(
        None, gt=0, le=100,
        description="SGD learning rate of the first epoch (the paper: 0.05); None sizes it "
                    "to the model with step_share.",
    )
    lr_end: float | None = Field(
        None, gt=0, le=100,
        description="Learning rate reached after max_epochs (exponential decay), with "
                    "lr_start; None: half the first epoch's (the paper: 0.05 to 0.01).",
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
    adapt_step: bool = Field(
        True,
        description="Undo an epoch that costs more utility than the gate allows and halve the "
                    "step, double a step that barely forgets, stop a descent that stalls "
                    "(false: the paper's fixed schedule, ended only by the stopping level or "
                    "max_epochs).",
    )
    class_target_acc: float | None = Field(
        None, ge=0, le=100,
        description="Class forgetting: stop once forget accuracy (percent) is at most this; "
                    "None: half the acceptance gate's limit, less when the sample is small.",
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
    max_matrix_mib: float = Field(
        2048, gt=0, le=1_048_576,
        description="Cap on the representation matrices (Σ d² float64 over the projected "
                    "layers, cached with every version): beyond it the widest layers are left "
                    "out, unchanged, and listed in the metrics. BERT-base or ViT-B/16 needs "
                    "1,143 MiB, a width-64 ResNet-18 704 MiB.",
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


def matrix_mib(layer: ProjectedLayer) -> float:
    """MiB of the layer's float64 representation matrix."""
    return layer.weight[0].numel() ** 2 * 8 / 2**20


def within_budget(layers: dict[str, ProjectedLayer],
                  max_mib: float) -> tuple[dict[str, ProjectedLayer], list[str]]:
    """The layers whose matrices fit in ``max_mib`` together, leaving out the widest first;
    and the names left out (in the model's order)."""
    total = sum(matrix_mib(layer) for layer in layers.values())
    left_out: set[str] = set()
    for name in sorted(layers, key=lambda n: -matrix_mib(layers[n])):
        if total <= max_mib:
            break
        left_out.add(name)
        total -= matrix_mib(layers[name])
    kept = {name: layer for name, layer in layers.items() if name not in left_out}
    return kept, [name for name in layers if name in left_out]


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


Spectrum = tuple[torch.Tensor, torch.Tensor]  # singular values S (descending), eigenvectors


def spectra(matrices: dict[str, torch.Tensor],
            device: torch.device | None = None) -> dict[str, Spectrum]:
    """Per layer, S = √eigenvalue of R in descending order and the matching eigenvectors."""
    out = {}
    for name, matrix in matrices.items():
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix.to(device))
        # eigh sorts ascending; subtracting R^f can leave tiny negative round-off values.
        out[name] = (eigenvalues.flip(0).clamp_min(0).sqrt(), eigenvectors.flip(1))
    return out


def bases_for(layer_spectra: dict[str, Spectrum], gamma: float) -> dict[str, torch.Tensor]:
    """Per layer, the leading eigenvectors whose cumulative share of S stays ≤ gamma."""
    bases = {}
    for name, (singular, eigenvectors) in layer_spectra.items():
        total = singular.sum()
        kept = int((singular.cumsum(0) / total <= gamma).sum()) if total > 0 else 0
        bases[name] = eigenvectors[:, :kept].float()
    return bases


def core_gradient_bases(
    matrices: dict[str, torch.Tensor], gamma: float, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Per layer, the orthonormal d×k basis U_k of the directions the data uses: the leading
    eigenvectors of R whose cumulative share of S = √eigenvalue stays ≤ gamma."""
    return bases_for(spectra(matrices, device), gamma)


def gamma_ladder(first: float, floor: float, step: float) -> list[float]:
    """γ values to try in turn: ``first``, then ``step`` lower each time, down to ``floor``."""
    ladder = [first]
    while ladder[-1] - step >= floor - 1e-9:
        ladder.append(round(ladder[-1] - step, 6))
    return ladder


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
        layers, left_out = within_budget(projected_layers(model), params.max_matrix_mib)
        reduced, source, retain_acc = _retained_matrices(model, layers, task, params)
        # A first request reads D for the matrices anyway, so it watches a D_r sample too;
        # a chained one, from cached matrices, never reads D_r.
        descent = _Descent(model, layers, spectra(reduced, task.device), task, params,
                           retain_acc, read_retain=source != "cached")
        descent.run(progress_span(task.progress, 0.1 if source == "cached" else 0.4, 1.0))
        task.progress(1.0)
        metrics = {"state_source": source, **descent.summary()}
        if left_out:
            metrics["layers_left_out"] = left_out
        state = dict(reduced)
        if descent.retain_acc is not None:
            # The projected steps barely move retained accuracy, so the next request reuses it.
            state[RETAIN_ACCURACY_KEY] = torch.tensor([descent.retain_acc], dtype=torch.float64)
        return UnlearningOutcome(model=model.eval(), metrics=metrics, state=state)


def _retained_matrices(model: nn.Module, layers: dict[str, ProjectedLayer], task: UnlearningTask,
                       params: Params) -> tuple[dict[str, torch.Tensor], str, float | None]:
    """R − R^f per layer, R from the cache when it fits this model (then no retained row is
    read), else computed over retain ∪ forget. Also says where R came from, and gives the base
    model's accuracy on its retained rows when cached (None: computed matrices, whose request
    has the monitor read it; or a cache from before it was kept)."""
    data = task.data
    cached = _usable_state(task.state, layers)
    if cached is not None:
        full, source, forget_phase = cached, "cached", (0.0, 0.05)
        retain_acc = _cached_retain_accuracy(task.state)
    else:
        full = _estimated_matrices(model, data.known_idx(), task, params)
        retain_acc = None
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
    """Projected SGD on D_f, run by the shared monitor until D_f is forgotten (see _monitor),
    at a lower γ when the first one cannot get there within the utility budget."""

    def __init__(self, model: nn.Module, layers: dict[str, ProjectedLayer],
                 layer_spectra: dict[str, Spectrum], task: UnlearningTask, params: Params,
                 retain_acc: float | None, *, read_retain: bool):
        self.model, self.task, self.params = model, task, params
        self.retain_acc = retain_acc
        self.spectra = layer_spectra
        self.parameters = [layers[name].weight for name in layer_spectra]
        self.weights: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.generator = seeded_generator(params.seed)
        self.monitor = Monitor(task, samples=params.eval_samples, generator=self.generator,
                               read_retain=read_retain, class_target_acc=params.class_target_acc)
        data = task.data
        self.forget_x, self.forget_y = data.x_train[data.forget_idx], data.y_train[data.forget_idx]
        # Whole classes: the classifier rows of the forgotten classes step unprojected. Those
        # rows only set the forgotten classes' own logits, and lowering them on D_f's
        # (non-negative, post-ReLU) features lowers them everywhere, which no retained sample
        # minds; projecting them protected nothing and left some classes unforgettable.
        try:
            self.head = classification_head(model).weight
        except ValueError:
            self.head = None
        self.free_rows = (torch.tensor(sorted(data.forget_classes), device=task.device)
                          if data.forget_classes and self.head is not None
                          and params.free_class_rows else None)
        first = params.class_gamma if data.forget_classes else params.gamma
        self.ladder = gamma_ladder(first, min(params.gamma_floor, first), params.gamma_step)
        self.gamma = first
        self.lr_start = 0.0
        self.attempts: list[dict] = []
        self.result = Run("not-run", 0.0)

    def run(self, progress: ProgressFn) -> None:
        self.monitor.begin(self.model, retain_accuracy=self.retain_acc,
                           level_exponent=self.params.level_exponent,
                           difficulty_weight=self.params.difficulty_weight)
        if self.retain_acc is None:  # a first request: the monitor read every D_r row
            self.retain_acc = self.monitor.base_retain_accuracy()
        weights = Weights(self.parameters)
        initial, best = weights.save(), None
        share = 1 / len(self.ladder)
        with only_these_trainable(self.model, self.parameters):
            for number, gamma in enumerate(self.ladder):
                if number:
                    weights.load(initial)
                result, lr = self._attempt(gamma, weights, progress_span(
                    progress, number * share, (number + 1) * share))
                score = self.monitor.score(self.model, result.kept)
                # Short of the level but inside the gate's window is good enough to keep.
                reached = (result.stop_reason in ("forgotten", "already-forgotten")
                           or self.monitor.acceptable(score))
                self.attempts.append({"gamma": gamma, "stop_reason": result.stop_reason,
                                      "epochs_run": result.rounds, "forget_acc": score.forget})
                if best is not None and not reached and score.forget >= best[0]:
                    break  # a lower γ did no better
                best = (score.forget, gamma, result, lr, weights.save(), self.weights)
                if reached:
                    break
        _, self.gamma, self.result, self.lr_start, saved, self.weights = best
        weights.load(saved)

    def _attempt(self, gamma: float, weights: Weights, progress: ProgressFn) -> tuple[Run, float]:
        params = self.params
        bases = bases_for(self.spectra, gamma)
        self.weights = list(zip(self.parameters, bases.values(), strict=True))
        lr_start = params.lr_start or self._sized_lr()
        ratio = (params.lr_end / params.lr_start if params.lr_start and params.lr_end
                 else DEFAULT_DECAY)
        decay = ratio ** (1 / params.max_epochs)

        def epoch(number: int, lr: float) -> None:
            self._epoch(lr * decay ** (number - 1))

        result = descend(self.monitor, self.model, weights, epoch, lr=lr_start,
                         max_rounds=params.max_epochs, bisect_steps=params.bisect_steps,
                         adaptive=params.adapt_step, progress=progress)
        return result, lr_start

    def _sized_lr(self) -> float:
        """The rate at which a step along the projected gradient of the forget loss (over the
        monitor's forget rows) moves the projected weights by step_share of their norm."""
        monitor, device = self.monitor, self.task.device
        self.model.zero_grad(set_to_none=True)
        with evaluating(self.model):
            logits = self.model(monitor.forget_x.to(device))
            unlearning_loss(logits, monitor.forget_y.to(device), self.params.offset,
                            self.params.entropy_weight).backward()
        gradients = [project_out(weight.grad, basis) for weight, basis in self.weights]
        self.model.zero_grad(set_to_none=True)
        lr = relative_lr(self.parameters, gradients, self.params.step_share)
        return lr if lr > 0 else 1.0

    def _epoch(self, lr: float) -> None:
        # float32 on a GPU too (no autocast): the descent is a few dozen steps over D_f, its
        # step is sized by _sized_lr's float32 gradient, and its gradients are projected onto
        # bases from float64 eigendecompositions; the matrices need exact inputs as well.
        self.model.train()
        freeze_norm_statistics(self.model)
        device = self.task.device
        for xb, yb in iterate_batches(self.forget_x, self.forget_y, self.params.batch_size,
                                      shuffle=True, generator=self.generator, device=device):
            self.model.zero_grad(set_to_none=True)
            logits = self.model(xb.to(device))
            unlearning_loss(logits, yb.to(device), self.params.offset,
                            self.params.entropy_weight).backward()
            with torch.no_grad():
                for weight, basis in self.weights:
                    step = project_out(weight.grad, basis)
                    if weight is self.head and self.free_rows is not None:
                        step[self.free_rows] = weight.grad[self.free_rows]
                    weight -= lr * step

    def summary(self) -> dict:
        level = self.monitor.level
        return {
            "gamma": self.gamma,
            "gamma_attempts": self.attempts,
            "kept_dimensions": {name: [basis.shape[1], basis.shape[0]]
                                for name, basis in zip(self.spectra, (b for _, b in self.weights),
                                                       strict=True)},
            "stop_reason": self.result.stop_reason,
            "stop_level": None if level is None else round(level, 2),
            "class_target": (round(self.monitor.class_target, 2)
                             if self.monitor.class_forgetting else None),
            "base_retain_accuracy": self.retain_acc,
            "lr_start": self.lr_start,
            "epochs_run": self.result.rounds,
            "epochs_undone": self.result.undone,
            "kept_epoch": round(self.result.kept, 4),
            "history": self.result.history,
        }
