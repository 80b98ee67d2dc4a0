"""Where the engine computes: the GPU when one is visible, the CPU otherwise."""

from __future__ import annotations

import platform
from typing import Any

import torch


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
