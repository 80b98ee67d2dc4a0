"""Where the engine computes: the GPU when one is visible, the CPU otherwise; and the few
switches that make a GPU compute fast, each of which does nothing on a CPU.

On a CUDA device the engine keeps training data resident on the device
(:mod:`worker.engine.data.device_batches`), runs the forward passes of training and of the
methods' optimisation loops under bf16 autocast (:func:`autocast_for`), lays images out
channels-last, evaluates in large batches (:func:`eval_batch_size`) and, when a bench preset
asks for it, compiles the model it trains (:func:`compiling`). On a CPU every one of these is
a no-op, so CPU results stay bit for bit what they were.
"""

from __future__ import annotations

import contextlib
import contextvars
import platform
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# Rows per evaluation batch on a GPU: inference is cheap per row and launch-bound in small
# batches; 2,048 CIFAR images are 25 MiB of float32 input.
GPU_EVAL_BATCH = 2048


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_hardware(device: torch.device) -> dict[str, Any]:
    """What a job ran on, for its metrics and receipt."""
    info: dict[str, Any] = {"device": str(device), "platform": platform.platform(),
                            "machine": platform.machine(), "python": platform.python_version(),
                            "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def on_gpu(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def autocast_for(device: torch.device | str | None, enabled: bool = True):
    """bf16 autocast on a CUDA device, a no-op anywhere else (and when not ``enabled``).

    Under it matmuls and convolutions run in bf16 while softmax, log-softmax, cross-entropy,
    norms and reductions stay in float32 (PyTorch's autocast lists); parameters, gradients
    and optimizer state stay float32, and bf16 has float32's range, so no loss scaling is
    needed. Use it for the forward passes of training-like loops only: never for what must
    be exact (projection matrices and their eigendecompositions, Fisher or saliency
    importances, evaluation and the gate's figures)."""
    if (not enabled or not on_gpu(device) or not torch.cuda.is_available()
            or not torch.cuda.is_bf16_supported()):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """The model's weights in channels-last layout for the block, then the default one back.
    Convolutions run about twice as fast in it on CPUs and on GPUs' tensor cores (same
    predictions); the layout is put back so what follows behaves exactly as before."""
    if not enabled:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def image_layout(x: torch.Tensor) -> torch.Tensor:
    """A batch of images (``N×C×H×W``) in channels-last layout; anything else as it is."""
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def eval_batch_size(device: torch.device | str | None, default: int) -> int:
    """Rows per evaluation batch: ``default`` on a CPU (what every CPU figure was taken
    with), :data:`GPU_EVAL_BATCH` on a GPU."""
    return max(default, GPU_EVAL_BATCH) if on_gpu(device) else default


_COMPILE: contextvars.ContextVar[bool] = contextvars.ContextVar("lethe_compile", default=False)


@contextlib.contextmanager
def compiling(enabled: bool) -> Iterator[None]:
    """Within the block, :func:`maybe_compiled` compiles the models ``train`` trains (on a
    GPU only). Off by default: compiling ResNet-18's training step takes tens of seconds
    per graph (train and eval modes, each batch size), which a short run does not win back,
    and it has not been measured here."""
    token = _COMPILE.set(bool(enabled))
    try:
        yield
    finally:
        _COMPILE.reset(token)


def maybe_compiled(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """``torch.compile(model)`` inside :func:`compiling` on a GPU; the model itself otherwise.
    The compiled module shares the model's parameters, so training it trains the model."""
    if _COMPILE.get() and on_gpu(device):
        return torch.compile(model)
    return model
