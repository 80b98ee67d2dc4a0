"""Feature constraint with adaptive loss balance: pull the forget set's features towards those
of a randomly initialised teacher (which never saw D_f), while cross-entropy on a small retain
subset keeps the rest of the model working; the two losses are weighed adaptively."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from worker.engine.methods._base import (
    MethodParams,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.methods._common import (
    EpochScore,
    ForgetMonitor,
    accuracy,
    freeze_norm_statistics,
    random_rows,
    working_copy,
)
from worker.engine.training import iterate_batches, seeded_generator

TASKS = ("forget", "recover")
Batch = tuple[torch.Tensor, torch.Tensor]


class Params(MethodParams):
    epochs: int = Field(20, ge=1, le=500, description="Upper bound on epochs; stops early.")
    optimizer: Literal["adam", "sgd"] = Field(
        "sgd", description="Optimizer of the model (SGD uses momentum 0.9).")
    lr: float = Field(0.01, gt=0, le=10, description="Learning rate of the model.")
    batch_size: int = Field(128, ge=1, le=8192, description="Samples per step of each task.")
    feature_layer: str = Field(
        "features", min_length=1, max_length=200,
        description="Module whose output is constrained, by its name in the model "
                    "('features' is the penultimate representation, the classifier's input).",
    )
    recover_fraction: float = Field(
        0.3, gt=0, le=1, description="Share of D_r drawn afresh each epoch for the recover task.")
    recover_max_samples: int = Field(
        5000, ge=1, le=1_000_000, description="Cap on the recover subset's size.")
    balance: Literal["uncertainty", "dwa", "fixed"] = Field(
        "uncertainty",
        description="How the forget and recover losses are weighed: learned uncertainty "
                    "(Kendall et al.), dynamic weight averaging (Liu et al.) or fixed weights.",
    )
    balance_lr: float = Field(
        0.1, gt=0, le=10,
        description="Learning rate of the uncertainty weights' log-variances; larger than the "
                    "model's so the weights adapt within a short run.",
    )
    dwa_temperature: float = Field(
        2.0, gt=0, le=100, description="Temperature T of dynamic weight averaging.")
    forget_weight: float = Field(1.0, ge=0, le=1000, description="Fixed weight of the forget loss.")
    recover_weight: float = Field(
        1.0, ge=0, le=1000, description="Fixed weight of the recover loss.")
    class_target_acc: float = Field(
        1.0, ge=0, le=100,
        description="Class forgetting: stop once forget accuracy (percent) is at most this. "
                    "Random forgetting stops once it is at most the starting test accuracy.",
    )
    eval_samples: int = Field(
        500, ge=10, le=100_000,
        description="Forget and test rows sampled for the per-epoch stopping check.",
    )
    repair_epochs: int = Field(
        4, ge=0, le=100,
        description="Passes of cross-entropy alone over a fresh recover subset once the "
                    "forget task has stopped, to win back retain accuracy the feature "
                    "constraint cost (0: none).",
    )


# --- Loss balancing -------------------------------------------------------------------------

class UncertaintyBalance(nn.Module):
    """Kendall et al.: L = Σ exp(−s_i)·L_i + s_i, the log-variances s_i learned with the model."""

    def __init__(self):
        super().__init__()
        self.log_variances = nn.Parameter(torch.zeros(len(TASKS)))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (torch.exp(-self.log_variances) * losses + self.log_variances).sum()

    def end_epoch(self, mean_losses: list[float]) -> None:
        """Learned by gradient; nothing to do between epochs."""

    def weights(self) -> list[float]:
        return torch.exp(-self.log_variances).tolist()


class DynamicWeightAverage(nn.Module):
    """Liu et al.: w_i = K·softmax(r_i/T) with r_i = L_i(t−1)/L_i(t−2) over epoch-mean losses;
    equal weights until two epochs have been seen."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.loss_history: list[list[float]] = []
        self.register_buffer("current", torch.ones(len(TASKS)))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.current * losses).sum()

    def end_epoch(self, mean_losses: list[float]) -> None:
        self.loss_history.append(mean_losses)
        if len(self.loss_history) < 2:
            return
        before, last = (torch.tensor(losses) for losses in self.loss_history[-2:])
        rates = last / before.clamp_min(1e-12)
        self.current = len(TASKS) * torch.softmax(rates / self.temperature, 0).to(self.current)

    def weights(self) -> list[float]:
        return self.current.tolist()


class FixedBalance(nn.Module):
    """Constant weights, for comparison with the adaptive schemes."""

    def __init__(self, forget_weight: float, recover_weight: float):
        super().__init__()
        self.register_buffer("current", torch.tensor([forget_weight, recover_weight]))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.current * losses).sum()

    def end_epoch(self, mean_losses: list[float]) -> None:
        """Fixed weights never change."""

    def weights(self) -> list[float]:
        return self.current.tolist()


LossBalance = UncertaintyBalance | DynamicWeightAverage | FixedBalance


def make_balance(params: Params) -> LossBalance:
    if params.balance == "uncertainty":
        return UncertaintyBalance()
    if params.balance == "dwa":
        return DynamicWeightAverage(params.dwa_temperature)
    return FixedBalance(params.forget_weight, params.recover_weight)


# --- Features ------------------------------------------------------------------------------

@contextlib.contextmanager
def capturing(model: nn.Module, layer_name: str, outputs: list[torch.Tensor]) -> Iterator[None]:
    """While active, every forward pass of ``model`` appends the named module's output."""
    modules = dict(model.named_modules())
    if not layer_name or layer_name not in modules:
        known = ", ".join(name for name in modules if name)
        raise ValueError(f"feature_layer {layer_name!r} is not a module of the model; "
                         f"known: {known}")
    handle = modules[layer_name].register_forward_hook(
        lambda _module, _inputs, output: outputs.append(output))
    try:
        yield
    finally:
        handle.remove()


def feature_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance between L2-normalised features, averaged over samples (in [0, 4]):
    the per-sample sum of squared errors, so the scale does not shrink with the width."""
    student = F.normalize(student.flatten(1), dim=1)
    teacher = F.normalize(teacher.flatten(1), dim=1)
    return (student - teacher).pow(2).sum(1).mean()


# --- The method ----------------------------------------------------------------------------

@register_method
class FeatureConstraint(UnlearningMethod):
    name = "feature-constraint"
    summary = (
        "Pull the forget set's features towards a random-initialised teacher's while a small "
        "retain subset keeps accuracy, with adaptively balanced losses."
    )
    reference = (
        "Yin, Wu, Li, Wang, Gao. A Machine Unlearning Method via Feature Constraint and "
        "Adaptive Loss Balance. Journal of Computer Research and Development 61(10):2649-2661, "
        "2024. doi:10.7544/issn1000-1239.202440476. Loss balance: Kendall, Gal, Cipolla. "
        "Multi-Task Learning Using Uncertainty to Weigh Losses. CVPR 2018. arXiv:1705.07115; "
        "Liu, Johns, Davison. End-to-End Multi-Task Learning with Attention. CVPR 2019. "
        "arXiv:1803.10704."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        return _FeatureConstraintRun(task, params).run()


class _FeatureConstraintRun:
    def __init__(self, task: UnlearningTask, params: Params):
        self.task, self.params = task, params
        self.model = working_copy(task)
        self.teacher = task.build_fresh().to(task.device).eval().requires_grad_(False)
        self.balance = make_balance(params).to(task.device)
        self.generator = seeded_generator(params.seed)
        self.monitor = ForgetMonitor.from_task(task, params.eval_samples, self.generator)
        self.optimizer = self._optimizer()
        self.history: list[dict] = []
        self.student_features: list[torch.Tensor] = []
        self.teacher_features: list[torch.Tensor] = []

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": self.model.parameters()}]
        if isinstance(self.balance, UncertaintyBalance):
            groups.append({"params": self.balance.parameters(), "lr": self.params.balance_lr})
        if self.params.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.params.lr)
        return torch.optim.SGD(groups, lr=self.params.lr, momentum=0.9)

    def run(self) -> UnlearningOutcome:
        start = self.monitor.score(self.model, 0)
        stop_reason = "already-forgotten" if self._forgotten(start, start) else self._train(start)
        if stop_reason != "already-forgotten":
            self._repair()
        self.task.progress(1.0)
        return UnlearningOutcome(model=self.model.eval(), metrics=self._metrics(start, stop_reason))

    def _forgotten(self, score: EpochScore, start: EpochScore) -> bool:
        # Against the starting test accuracy: the forget task can lower test accuracy too.
        return self.monitor.forgotten(score, self.params.class_target_acc, start.test_acc)

    def _train(self, start: EpochScore) -> str:
        layer = self.params.feature_layer
        with (capturing(self.model, layer, self.student_features),
              capturing(self.teacher, layer, self.teacher_features)):
            for epoch in range(1, self.params.epochs + 1):
                mean_losses = self._train_epoch()
                # Weights in effect at the epoch's end, before DWA computes the next ones.
                weights = self.balance.weights()
                self.balance.end_epoch(mean_losses)
                score = self.monitor.score(self.model, epoch)
                self.history.append({**score.as_dict(), **_per_task("loss", mean_losses),
                                     **_per_task("weight", weights)})
                self.task.progress(epoch / self.params.epochs)
                if self._forgotten(score, start):
                    return "forgotten"
        return "max-epochs"

    def _repair(self) -> None:
        """Cross-entropy on recover subsets only: the forget task's collateral damage falls on
        features the retained data shares, and these few steps restore them. Restoring those
        features can bring a forgotten class back, so after class forgetting an epoch that
        lifts forget accuracy above the target is undone and the repair ends."""
        guarded = self.monitor.class_forgetting
        for epoch in range(1, self.params.repair_epochs + 1):
            before = copy.deepcopy(self.model.state_dict()) if guarded else None
            self.model.train()
            freeze_norm_statistics(self.model)
            losses = [self._recover_step(batch)
                      for batch in self._cycled(self._recover_subset(), self._recover_steps())]
            forget_acc = accuracy(self.model, self.monitor.forget_x, self.monitor.forget_y,
                                  self.task.device)
            entry = {"phase": "repair", "repair_epoch": epoch, "forget_acc": forget_acc,
                     "recover_loss": sum(losses) / max(1, len(losses))}
            if guarded and forget_acc > self.params.class_target_acc:
                self.model.load_state_dict(before)
                self.history.append(entry | {"undone": True})
                return
            self.history.append(entry)

    def _recover_step(self, batch: Batch) -> float:
        x, y = batch[0].to(self.task.device), batch[1].to(self.task.device)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def _train_epoch(self) -> list[float]:
        """One pass; returns the epoch-mean forget and recover losses."""
        self.model.train()
        freeze_norm_statistics(self.model)
        totals, steps = torch.zeros(len(TASKS)), 0
        for forget_batch, recover_batch in self._paired_batches():
            totals += self._step(forget_batch, recover_batch).cpu()
            steps += 1
        return (totals / max(1, steps)).tolist()

    def _step(self, forget_batch: Batch, recover_batch: Batch) -> torch.Tensor:
        device = self.task.device
        forget_x = forget_batch[0].to(device)
        recover_x, recover_y = recover_batch[0].to(device), recover_batch[1].to(device)
        self.student_features.clear()
        self.teacher_features.clear()
        with torch.no_grad():
            self.teacher(forget_x)
        self.model(forget_x)
        losses = torch.stack([
            feature_distance(self.student_features[0], self.teacher_features[0]),
            F.cross_entropy(self.model(recover_x), recover_y),
        ])
        self.optimizer.zero_grad(set_to_none=True)
        self.balance.combine(losses).backward()
        self.optimizer.step()
        return losses.detach()

    def _paired_batches(self) -> Iterator[tuple[Batch, Batch]]:
        """One forget batch with one recover batch per step, over whichever set needs more
        batches; the other set is cycled (reshuffled on each pass)."""
        data, size = self.task.data, self.params.batch_size
        forget = (data.x_train[data.forget_idx], data.y_train[data.forget_idx])
        recover = self._recover_subset()
        steps = max(math.ceil(len(forget[0]) / size), self._recover_steps())
        # Both yield `steps` batches; an empty retain set yields none and ends the epoch.
        return zip(self._cycled(forget, steps), self._cycled(recover, steps), strict=False)

    def _recover_size(self) -> int:
        retained = len(self.task.data.retain_idx)
        return min(self.params.recover_max_samples,
                   math.ceil(self.params.recover_fraction * retained))

    def _recover_steps(self) -> int:
        return math.ceil(self._recover_size() / self.params.batch_size)

    def _recover_subset(self) -> Batch:
        """A fresh random share of D_r (recover_fraction, at most recover_max_samples rows)."""
        data = self.task.data
        rows = data.retain_idx[random_rows(len(data.retain_idx), self._recover_size(),
                                           self.generator)]
        return data.x_train[rows], data.y_train[rows]

    def _cycled(self, tensors: Batch, steps: int) -> Iterator[Batch]:
        produced = 0
        while produced < steps and len(tensors[0]):
            for batch in iterate_batches(*tensors, self.params.batch_size, shuffle=True,
                                         generator=self.generator):
                if produced == steps:
                    return
                produced += 1
                yield batch

    def _metrics(self, start: EpochScore, stop_reason: str) -> dict:
        final = self.balance.weights()
        return {
            "stop_reason": stop_reason,
            "epochs_run": sum(1 for entry in self.history if "phase" not in entry),
            "repair_epochs_run": sum(1 for entry in self.history
                                     if "phase" in entry and not entry.get("undone")),
            "balance": self.params.balance,
            "balance_weights": dict(zip(TASKS, final, strict=True)),
            "start": start.as_dict(),
            "history": self.history,
        }


def _per_task(kind: str, values: list[float]) -> dict[str, float]:
    return {f"{task}_{kind}": value for task, value in zip(TASKS, values, strict=True)}
