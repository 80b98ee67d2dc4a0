"""All-CNN-C (Springenberg et al., "Striving for Simplicity", ICLR 2015 workshop).

Only convolutions, strided ones in place of pooling. As in the unlearning literature's
variant, convolutions are batch-normalised by default and the final 1×1 convolution to the
classes is a linear layer after global average pooling.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from worker.engine.architectures._base import Classifier, register_architecture
from worker.engine.architectures._layers import ImageConfig, conv_bn_relu, global_pool


class AllCNNConfig(ImageConfig):
    width: float = Field(1.0, gt=0, le=8, description="Multiplier on the 96/192 channels.")
    batch_norm: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0,
                           description="Dropout after each strided block (the paper: 0.5).")


class AllCNN(Classifier):
    def __init__(self, config: AllCNNConfig):
        super().__init__()
        narrow = max(1, round(96 * config.width))
        wide = max(1, round(192 * config.width))
        bn = config.batch_norm
        dropout = [nn.Dropout(config.dropout)] if config.dropout else []
        self.features = nn.Sequential(
            *conv_bn_relu(config.input_shape[0], narrow, batch_norm=bn),
            *conv_bn_relu(narrow, narrow, batch_norm=bn),
            *conv_bn_relu(narrow, narrow, stride=2, batch_norm=bn),
            *dropout,
            *conv_bn_relu(narrow, wide, batch_norm=bn),
            *conv_bn_relu(wide, wide, batch_norm=bn),
            *conv_bn_relu(wide, wide, stride=2, batch_norm=bn),
            *dropout,
            *conv_bn_relu(wide, wide, batch_norm=bn),
            *conv_bn_relu(wide, wide, kernel_size=1, batch_norm=bn),
            *global_pool(),
        )
        self.classifier = nn.Linear(wide, config.num_classes)


@register_architecture("allcnn", AllCNNConfig,
                       "All-CNN-C: strided convolutions only, global average pooling.")
def build_allcnn(config: AllCNNConfig) -> AllCNN:
    return AllCNN(config)
