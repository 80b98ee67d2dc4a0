"""The contract between the job runner and an unlearning method.

A method is one module in this package holding a subclass of :class:`UnlearningMethod`
decorated with :func:`register_method`. It receives an :class:`UnlearningTask` (the model at
the base version, the data split into forget and retain sets, the training recipe, a progress
callback) and returns an :class:`UnlearningOutcome` (the unlearned model, method-specific
metrics, and optional state to cache with the new version).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import TensorDataset

from worker.engine.architectures import Classifier
from worker.engine.registry import Registry
from worker.engine.training import TrainingRecipe


class JobCancelled(Exception):
    """Raised by the progress callback when the job's cancel flag is set."""


ProgressFn = Callable[[float], None]


def no_progress(_fraction: float) -> None:
    return None


class MethodParams(BaseModel):
    """Parameters every method takes; each method extends this with its own."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for every random choice.")


@dataclass
class UnlearningData:
    """The training split as model inputs, with this request's forget/retain partition.

    ``x_train``/``y_train`` hold every training row of the dataset; rows forgotten by earlier
    versions are in neither ``forget_idx`` nor ``retain_idx``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    forget_idx: torch.Tensor
    retain_idx: torch.Tensor
    num_classes: int
    forget_classes: list[int] | None = None  # set when the request forgets whole classes

    def forget(self) -> TensorDataset:
        return TensorDataset(self.x_train[self.forget_idx], self.y_train[self.forget_idx])

    def retain(self) -> TensorDataset:
        return TensorDataset(self.x_train[self.retain_idx], self.y_train[self.retain_idx])

    def test(self) -> TensorDataset:
        return TensorDataset(self.x_test, self.y_test)

    def known_idx(self) -> torch.Tensor:
        """Rows the base model still carries: retain plus forget."""
        return torch.cat([self.retain_idx, self.forget_idx]).sort().values


@dataclass
class UnlearningTask:
    model: Classifier
    build_fresh: Callable[[], Classifier]  # a randomly initialised model of the same config
    data: UnlearningData
    recipe: TrainingRecipe
    device: torch.device
    progress: ProgressFn = no_progress
    # State the method cached with the base version (e.g. projected-gradient's matrices).
    state: dict[str, torch.Tensor] | None = None


@dataclass
class UnlearningOutcome:
    model: Classifier
    metrics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None  # cached with the new version


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators (dropout, fresh initialisation) without leaking the seed
    into the caller's random state."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class UnlearningMethod(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Exact methods (retraining) give what a model that never saw D_f gives, by construction:
    # the acceptance gate records their figures but does not second-guess them.
    exact: ClassVar[bool] = False

    def run(self, task: UnlearningTask, params: MethodParams) -> UnlearningOutcome:
        """Unlearn with every random choice seeded by ``params.seed``."""
        with seeded_rng(params.seed, task.device):
            return self.unlearn(task, params)

    @abstractmethod
    def unlearn(self, task: UnlearningTask, params: MethodParams) -> UnlearningOutcome: ...

    @classmethod
    def params_schema(cls) -> dict[str, Any]:
        return cls.Params.model_json_schema()


METHODS: Registry[type[UnlearningMethod]] = Registry("method", "worker.engine.methods")


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    METHODS.register(cls.name)(cls)
    return cls
