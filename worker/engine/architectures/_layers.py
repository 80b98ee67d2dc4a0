"""Building blocks shared by the convolutional architectures."""

from __future__ import annotations

from pydantic import field_validator
from torch import nn

from worker.engine.architectures._base import ArchitectureConfig


class ImageConfig(ArchitectureConfig):
    """A config whose input is an image batch ``N×C×H×W``."""

    @field_validator("input_shape")
    @classmethod
    def _channels_height_width(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError("convolutional architectures need input_shape (channels, height, "
                             "width)")
        return shape


def conv_bn_relu(in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1,
                 batch_norm: bool = True) -> list[nn.Module]:
    """A same-padded convolution, optionally batch-normalised, then ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, bias=not batch_norm)  # BN has its own shift
    norm = [nn.BatchNorm2d(out_channels)] if batch_norm else []
    return [conv, *norm, nn.ReLU()]


def global_pool() -> list[nn.Module]:
    """Average over whatever spatial size is left, so any input size reaches the head."""
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
