"""Checking uploaded weights: safetensors only, tensors matching the architecture exactly."""

from __future__ import annotations

import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from app.core.errors import invalid
from worker.engine.architectures import Classifier


def parse_weights(data: bytes) -> dict[str, torch.Tensor]:
    # safetensors is a plain header plus raw buffers: parsing it never executes code, unlike
    # a pickle (torch.load), which this service never calls on an upload.
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise invalid(f"weights: not a safetensors file ({exc})") from None


def check_against(model: Classifier, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(f"{k} {list(tensors[k].shape)} != {list(v.shape)}"
                         for k, v in expected.items()
                         if k in tensors and tensors[k].shape != v.shape)
    wrong_dtype = sorted(f"{k} {tensors[k].dtype} != {v.dtype}" for k, v in expected.items()
                         if k in tensors and not _dtype_compatible(tensors[k].dtype, v.dtype))
    problems = [("missing tensors", missing), ("unexpected tensors", unexpected),
                ("wrong shapes", wrong_shape), ("wrong dtypes", wrong_dtype)]
    found = {label: items for label, items in problems if items}
    if found:
        detail = "; ".join(f"{label}: {', '.join(items[:10])}" + (" …" if len(items) > 10 else "")
                           for label, items in found.items())
        raise invalid(f"weights: do not match the architecture: {detail}",
                      **{label.replace(" ", "_"): items for label, items in found.items()})
    non_finite = sorted(k for k, t in tensors.items()
                        if t.is_floating_point() and not torch.isfinite(t).all())
    if non_finite:
        raise invalid(f"weights: non-finite values in {', '.join(non_finite[:10])}")


def _dtype_compatible(got: torch.dtype, want: torch.dtype) -> bool:
    if want.is_floating_point:
        return got.is_floating_point
    return got == want


RECORDED_KEYS = ("architecture", "architecture_config", "training_config")


def recorded_metadata(data: bytes) -> dict:
    """What ``lethe train`` recorded in a safetensors file's ``__metadata__``: the architecture
    and both configs, JSON-encoded. Keys that are absent or not JSON (another tool's metadata)
    are left out; so is everything from a file that is not safetensors (its check says so)."""
    if len(data) < 8:
        return {}
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, 100 << 20):
        return {}
    try:
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        return {}
    recorded = {}
    for key in RECORDED_KEYS:
        try:
            recorded[key] = json.loads(metadata[key])
        except (KeyError, TypeError, ValueError):
            continue
    kinds = {"architecture": str, "architecture_config": dict, "training_config": dict}
    return {k: v for k, v in recorded.items() if isinstance(v, kinds[k])}
