"""Bad teacher: a student (starting as the original model) distils the original model, the
competent teacher, on a sample of D_r and a randomly initialised model, the incompetent teacher,
on D_f; the forgotten rows end up looking like rows the model knows nothing about."""

from __future__ import annotations

import torch
from pydantic import Field

from worker.engine.device import autocast_for
from worker.engine.methods._base import (
    MethodParams,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.methods._baseline_utils import (
    StepProgress,
    distillation_kl,
    forget_set,
    frozen_copy,
    require_rows,
    retain_sample,
    steps_per_epoch,
)
from worker.engine.methods._common import working_copy
from worker.engine.training import iterate_batches, seeded_generator


class Params(MethodParams):
    epochs: int = Field(1, ge=1, le=100, description="Passes over D_f ∪ the D_r sample.")
    lr: float = Field(5e-4, gt=0, le=10, description="Adam learning rate.")
    batch_size: int = Field(
        32, ge=1, le=8192, description="Rows per step, forget and retain rows mixed.")
    retain_fraction: float = Field(
        0.3, gt=0, le=1, description="Share of D_r drawn (once) for the competent teacher.")
    temperature: float = Field(
        1.0, gt=0, le=100, description="Softmax temperature of the distillation KL.")


@register_method
class BadTeacher(UnlearningMethod):
    name = "bad-teacher"
    summary = (
        "Distil the original model on a retain sample and a randomly initialised model on the "
        "forget set into a copy of the original (competent and incompetent teachers)."
    )
    reference = (
        "Chundawat, Tarun, Mandal, Kankanhalli. Can Bad Teaching Induce Forgetting? Unlearning "
        "in Deep Networks Using an Incompetent Teacher. AAAI 2023. arXiv:2205.08096."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        require_rows(task.data, retain=True)
        generator = seeded_generator(params.seed)
        student = working_copy(task)
        competent = frozen_copy(student)
        incompetent = frozen_copy(task.build_fresh().to(task.device))
        x, is_forget = self._mixed_rows(task, params, generator)
        optimizer = torch.optim.Adam(student.parameters(), lr=params.lr)
        steps = StepProgress(task.progress,
                             params.epochs * steps_per_epoch(len(x), params.batch_size))
        epoch_losses = []
        for _ in range(params.epochs):
            student.train()
            total = 0.0
            for xb, forget_rows in iterate_batches(x, is_forget, params.batch_size,
                                                   shuffle=True, generator=generator,
                                                   device=task.device):
                xb, forget_rows = xb.to(task.device), forget_rows.to(task.device)
                # bf16 forward passes on a GPU; the KL (log-softmax) runs in float32.
                with autocast_for(task.device):
                    with torch.no_grad():
                        teacher_logits = torch.where(forget_rows[:, None], incompetent(xb),
                                                     competent(xb))
                    loss = distillation_kl(student(xb), teacher_logits, params.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(xb)
                steps.advance()
            epoch_losses.append(total / len(x))
        metrics = {"epoch_losses": epoch_losses, "forget_rows": int(is_forget.sum()),
                   "retain_rows": int((~is_forget).sum())}
        return UnlearningOutcome(model=student.eval(), metrics=metrics)

    @staticmethod
    def _mixed_rows(task: UnlearningTask, params: Params,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """D_f and the D_r sample in one set, with a flag saying which teacher a row gets."""
        x_forget, _ = forget_set(task.data)
        x_retain, _ = retain_sample(task.data, params.retain_fraction, generator)
        is_forget = torch.cat([torch.ones(len(x_forget), dtype=torch.bool),
                               torch.zeros(len(x_retain), dtype=torch.bool)])
        return torch.cat([x_forget, x_retain]), is_forget
