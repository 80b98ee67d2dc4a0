"""Hugging Face classifiers built from their ``config.json`` alone: no user code, no download.

``hf-image-classifier`` and ``hf-text-classifier`` take the model's ``config.json`` as
``hf_config`` and build it with transformers' own classes (``AutoConfig.for_model`` and
``AutoModelFor…Classification.from_config``). What a config may ask for is narrow:

- ``model_type`` must be one of transformers' own architectures in :data:`IMAGE_TYPES` or
  :data:`TEXT_TYPES`; ``auto_map`` and ``trust_remote_code`` (remote code) are refused, and so
  are quantization configs (they load foreign kernels);
- sizes are capped field by field (:data:`SIZE_LIMITS`) before anything is built, and the
  parameter count is taken on the meta device (no memory) before a real model is;
- Hugging Face's hub is switched off in this process (``HF_HUB_OFFLINE``,
  ``TRANSFORMERS_OFFLINE``): nothing is ever fetched, and nothing but local dicts is read.

The model is the transformers classifier itself, adopted: its top-level modules (``vit`` and
``classifier``, ``bert``, ``dropout`` and ``classifier``, …) are this module's, so its state
dict has exactly transformers' names and a checkpoint Lethe writes loads with
``from_pretrained`` from a folder holding the config and the safetensors.

Images arrive as ``N×C×H×W`` float tensors normalised with the preprocessor's
``image_mean``/``image_std`` when a ``preprocessor_config.json`` came with the model (else
with the dataset's own statistics, as ``lethe train`` trains them); text arrives as a
:class:`~worker.engine.inputs.TokenBatch` of ``input_ids`` and ``attention_mask`` from the
model's own tokenizer (``worker/engine/data/tokenized.py``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from worker.engine.architectures._base import (
    ArchitectureConfig,
    Classifier,
    register_architecture,
)
from worker.engine.inputs import TokenBatch

# Never reach the hub: set before transformers (or huggingface_hub) is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# transformers' own image and text classifiers whose head is a linear layer on a pooled
# representation; each builds with AutoModelFor…Classification.from_config.
IMAGE_TYPES = frozenset({"vit", "deit", "beit", "resnet", "convnext", "convnextv2", "swin",
                         "mobilenet_v2", "regnet", "efficientnet"})
TEXT_TYPES = frozenset({"bert", "distilbert", "roberta", "xlm-roberta", "albert", "electra"})
# Keys that would run or load code that is not transformers' own.
FORBIDDEN_KEYS = frozenset({"auto_map", "trust_remote_code", "quantization_config",
                            "custom_pipelines"})
# Upper bounds on the fields that size a model (a base model is far below each).
SIZE_LIMITS = {
    "hidden_size": 8192, "dim": 8192, "hidden_dim": 32768, "intermediate_size": 65536,
    "num_hidden_layers": 96, "n_layers": 96, "num_attention_heads": 128, "n_heads": 128,
    "vocab_size": 1_000_000, "max_position_embeddings": 16384, "embedding_size": 8192,
    "image_size": 1024, "patch_size": 1024, "num_channels": 64, "embed_dim": 8192,
    "num_groups": 96, "type_vocab_size": 64, "encoder_stride": 1024,
}
MAX_LIST_LENGTH = 64
# Parameters a registered Hugging Face model may have (counted on the meta device first).
MAX_PARAMETERS = 2_000_000_000
DEFAULT_MAX_LENGTH = 128
# Position ids that start after the padding index: max_length is 2 below the positions.
OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta"})
# What retrain and finetune train with when a registration gives no training_config:
# transformers' usual fine-tuning recipe (AdamW, linear decay after a 10% warm-up).
IMAGE_RECIPE = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01, "schedule": "linear",
                "warmup_ratio": 0.1, "epochs": 10, "batch_size": 32}
TEXT_RECIPE = {"optimizer": "adamw", "lr": 5e-5, "weight_decay": 0.01, "schedule": "linear",
               "warmup_ratio": 0.1, "epochs": 3, "batch_size": 32}


class HFConfigError(ValueError):
    """A config.json this service will not build."""


def check_hf_config(config: dict[str, Any], allowed: frozenset[str], num_classes: int) -> None:
    """Refuse what may not be built, with a message fit for the client."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in allowed:
        raise HFConfigError(f"model_type {model_type!r} is not one of transformers' own "
                            f"architectures allowed here: {', '.join(sorted(allowed))}")
    found = sorted(_keys(config) & FORBIDDEN_KEYS)
    if found:
        raise HFConfigError(f"{', '.join(found)}: custom or remote code is never loaded; "
                            "remove these keys")
    for key, limit in SIZE_LIMITS.items():
        value = config.get(key)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, bool) or (item is not None and not isinstance(item, int)):
                if key == "image_size" and isinstance(item, list):
                    continue
                raise HFConfigError(f"{key}: an integer (got {item!r})")
            if isinstance(item, int) and not 0 < item <= limit:
                raise HFConfigError(f"{key}: {item} is outside 1..{limit}")
    for key, value in config.items():
        if isinstance(value, list) and len(value) > MAX_LIST_LENGTH:
            raise HFConfigError(f"{key}: at most {MAX_LIST_LENGTH} entries")
        if isinstance(value, list) and all(isinstance(v, int) for v in value) and any(
                not 0 < v <= 1_000_000 for v in value if not isinstance(v, bool)):
            raise HFConfigError(f"{key}: every entry must be within 1..1000000")
    labels = num_labels_of(config)
    if labels != num_classes:
        raise HFConfigError(f"num_labels: the config has {labels} labels (num_labels / "
                            f"id2label) but the dataset has {num_classes} classes")
    problem = config.get("problem_type")
    if problem not in (None, "single_label_classification"):
        raise HFConfigError(f"problem_type {problem!r}: only single_label_classification")


def _keys(value: Any) -> set[str]:
    """Every key of a nested dict (a forbidden key hidden in a sub-config counts too)."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def num_labels_of(config: dict[str, Any]) -> int:
    """Labels the config declares: id2label's entries (keys "0".."n-1"), else num_labels,
    else transformers' default of 2."""
    id2label = config.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict) or not id2label:
            raise HFConfigError("id2label: an object of label index -> name")
        try:
            indices = sorted(int(k) for k in id2label)
        except (TypeError, ValueError):
            raise HFConfigError("id2label: keys must be label indices 0..n-1") from None
        if indices != list(range(len(indices))):
            raise HFConfigError("id2label: keys must be label indices 0..n-1")
        given = config.get("num_labels")
        if given is not None and given != len(indices):
            raise HFConfigError(f"num_labels {given} != id2label's {len(indices)} entries")
        return len(indices)
    given = config.get("num_labels", 2)
    if isinstance(given, bool) or not isinstance(given, int):
        raise HFConfigError("num_labels: an integer")
    return given


def check_label_names(config: dict[str, Any], classes: list[str]) -> None:
    """id2label's names, unless transformers' placeholders (LABEL_0, …), must be the
    dataset's class names in order (its classes are numbered in that order)."""
    id2label = config.get("id2label")
    if not id2label:
        return
    names = [str(id2label.get(str(i), id2label.get(i))) for i in range(len(id2label))]
    if names == [f"LABEL_{i}" for i in range(len(names))]:
        return
    if names != [str(c) for c in classes]:
        raise HFConfigError(f"id2label: names {names[:10]} do not match the dataset's classes "
                            f"{list(classes)[:10]} (in order)")


def with_labels(config: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The config with num_labels, id2label and label2id set to ``classes``."""
    id2label = {str(i): str(name) for i, name in enumerate(classes)}
    return {**config, "num_labels": len(classes), "id2label": id2label,
            "label2id": {name: int(i) for i, name in id2label.items()}}


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    """The keys AutoConfig.for_model takes (the ones transformers writes for itself out)."""
    dropped = {"model_type", "transformers_version", "_name_or_path", "architectures",
               "torch_dtype", "dtype"}
    return {k: v for k, v in config.items() if k not in dropped}


def build_hf(config: dict[str, Any], family: str, *, meta: bool = False) -> nn.Module:
    """transformers' classifier for ``config``, randomly initialised (float32)."""
    from transformers import (
        AutoConfig,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    hf_config = AutoConfig.for_model(config["model_type"], **_clean(config))
    auto = (AutoModelForImageClassification if family == "image"
            else AutoModelForSequenceClassification)
    if meta:
        with torch.device("meta"):
            return auto.from_config(hf_config, dtype=torch.float32)
    return auto.from_config(hf_config, dtype=torch.float32)


def parameter_count(config: dict[str, Any], family: str) -> int:
    """Parameters of the model ``config`` builds, counted on the meta device (no memory)."""
    model = build_hf(config, family, meta=True)
    return sum(p.numel() for p in model.parameters())


class HFClassifier(Classifier):
    """A transformers classifier as a Lethe :class:`Classifier`: ``forward`` takes pixel
    values (``N×C×H×W``) or a :class:`TokenBatch` and returns the logits."""

    def __init__(self, hf_model: nn.Module, family: str):
        nn.Module.__init__(self)
        if list(hf_model.named_parameters(recurse=False)):
            raise ValueError(f"{type(hf_model).__name__}: parameters outside its submodules")
        # The transformers model is kept but not registered: its submodules are registered
        # here under their own names, so the state dict is transformers' exactly.
        object.__setattr__(self, "hf", hf_model)
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        self.family = family

    def forward(self, x: torch.Tensor | TokenBatch) -> torch.Tensor:
        self.hf.training = self.training
        if isinstance(x, TokenBatch):
            fields = {k: v for k, v in x.trimmed().items()
                      if k in ("input_ids", "attention_mask", "token_type_ids", "inputs_embeds")}
            return self.hf(**fields, return_dict=True).logits
        return self.hf(pixel_values=x, return_dict=True).logits

    def input_embeddings(self) -> nn.Module | None:
        """The token embedding table (text models), for methods that work in its space."""
        getter = getattr(self.hf, "get_input_embeddings", None)
        return getter() if self.family == "text" and getter is not None else None


class _HFConfig(ArchitectureConfig):
    hf_config: dict[str, Any] = Field(
        ..., description="The model's config.json (transformers' own model_type, no auto_map).")

    @model_validator(mode="after")
    def _buildable(self):
        check_hf_config(self.hf_config, self.allowed_types(), self.num_classes)
        return self

    @classmethod
    def allowed_types(cls) -> frozenset[str]:
        return IMAGE_TYPES


class HFImageConfig(_HFConfig):
    preprocessor: dict[str, Any] | None = Field(
        None, description="preprocessor_config.json: its image_mean and image_std normalise "
                          "the inputs (else the dataset's statistics do).")

    @field_validator("input_shape")
    @classmethod
    def _image(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError("image classifiers need input_shape (channels, height, width)")
        return shape

    @model_validator(mode="after")
    def _matches_images(self):
        channels, height, width = self.input_shape
        given = self.hf_config.get("num_channels")
        if given is not None and given != channels:
            raise ValueError(f"hf_config.num_channels {given} != the images' {channels}")
        size = self.hf_config.get("image_size")
        if size is not None:
            size = list(size) if isinstance(size, list) else [size, size]
            if size != [height, width]:
                raise ValueError(f"hf_config.image_size {size} != the images' "
                                 f"{[height, width]} (Lethe does not resize)")
        if self.preprocessor is not None:
            normalisation(self.preprocessor, channels)
        return self


def normalisation(preprocessor: dict[str, Any],
                  channels: int) -> tuple[list[float], list[float]] | None:
    """(mean, std) per channel that a preprocessor config asks for on pixels scaled to 0..1,
    or None when it does not normalise."""
    factor = preprocessor.get("rescale_factor", 1 / 255)
    if preprocessor.get("do_rescale", True) and not (
            isinstance(factor, int | float) and abs(factor * 255 - 1) < 1e-6):
        raise ValueError("preprocessor: only rescale_factor 1/255 (pixels to 0..1)")
    if not preprocessor.get("do_normalize", True):
        return None
    mean, std = preprocessor.get("image_mean"), preprocessor.get("image_std")
    values = []
    for name, value in (("image_mean", mean), ("image_std", std)):
        value = [value] * channels if isinstance(value, int | float) else value
        if (not isinstance(value, list) or len(value) != channels
                or not all(isinstance(v, int | float) for v in value)):
            raise ValueError(f"preprocessor.{name}: {channels} numbers")
        values.append([float(v) for v in value])
    if any(s <= 0 for s in values[1]):
        raise ValueError("preprocessor.image_std: positive numbers")
    return values[0], values[1]


class HFTextConfig(_HFConfig):
    input_shape: tuple[int, ...] = Field(
        (DEFAULT_MAX_LENGTH,), min_length=0, max_length=3,
        description="What the dataset records as one sample's shape (text: not used).")
    tokenizer_sha256: str = Field(
        ..., pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the model's tokenizer.json, stored beside the weights.")
    tokenizer_config: dict[str, Any] = Field(
        default_factory=dict, description="tokenizer_config.json (pad_token, …), if any.")
    max_length: int | None = Field(
        None, ge=2, le=16384,
        description="Tokens per text (longer texts are truncated); at most the config's "
                    "max_position_embeddings. Default: 128, or max_position_embeddings if "
                    "fewer.")

    @classmethod
    def allowed_types(cls) -> frozenset[str]:
        return TEXT_TYPES

    @model_validator(mode="after")
    def _fits_positions(self):
        positions = self.hf_config.get("max_position_embeddings")
        if isinstance(positions, int) and self.hf_config.get("model_type") in OFFSET_POSITIONS:
            positions -= 2  # RoBERTa's positions start after its padding index
        if self.max_length is None:
            self.max_length = min(DEFAULT_MAX_LENGTH, positions if isinstance(positions, int)
                                  and positions >= 2 else DEFAULT_MAX_LENGTH)
        if isinstance(positions, int) and self.max_length > positions:
            raise ValueError(f"max_length {self.max_length} > the {positions} positions the "
                             f"model's max_position_embeddings allow")
        return self


def _build(config: _HFConfig, family: str) -> HFClassifier:
    count = parameter_count(config.hf_config, family)
    if count > MAX_PARAMETERS:
        raise HFConfigError(f"the config builds {count:,} parameters; at most "
                            f"{MAX_PARAMETERS:,}")
    return HFClassifier(build_hf(config.hf_config, family), family)


@register_architecture("hf-image-classifier", HFImageConfig,
                       "A transformers image classifier (ViT, DeiT, ResNet, ConvNeXt, Swin, "
                       "MobileNetV2, …) built from its config.json; no user code.",
                       default_recipe=IMAGE_RECIPE)
def build_hf_image(config: HFImageConfig) -> HFClassifier:
    return _build(config, "image")


@register_architecture("hf-text-classifier", HFTextConfig,
                       "A transformers text classifier (BERT, DistilBERT, RoBERTa, …) built "
                       "from its config.json, tokenized by its tokenizer.json; no user code.",
                       default_recipe=TEXT_RECIPE)
def build_hf_text(config: HFTextConfig) -> HFClassifier:
    return _build(config, "text")


def meta_model(config: dict[str, Any], family: str) -> HFClassifier:
    """The classifier on the meta device: names, shapes and dtypes, no memory (the weights
    of an upload are checked against it)."""
    return HFClassifier(build_hf(config, family, meta=True), family)

