"""Hugging Face classifiers on disk: train one from a config (``lethe train``), write the folder
transformers' ``from_pretrained`` reads, and the files Lethe registers it with.

A folder holds ``config.json`` (with the dataset's class names as ``id2label``),
``model.safetensors`` (transformers' tensor names; its metadata records the architecture and
both configs, as for every ``lethe train`` output), and for text ``tokenizer.json`` and
``tokenizer_config.json``. Nothing is downloaded: the model is built from the config, and a
text model without a tokenizer of its own gets a word-level one built from the training texts
by the ``tokenizers`` library (lower-cased, split on whitespace and punctuation, BERT's
``[CLS] … [SEP]`` template).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.engine.architectures import ARCHITECTURES
from worker.engine.architectures.huggingface import (
    HFImageConfig,
    HFTextConfig,
    normalisation,
    with_labels,
)
from worker.engine.data.tokenized import load_tokenizer, tokenize_source
from worker.engine.inputs import TokenBatch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONFIG, WEIGHTS, TOKENIZER, TOKENIZER_CONFIG, PREPROCESSOR = (
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "preprocessor_config.json")


def word_level_tokenizer(texts, vocab_size: int) -> str:
    """tokenizer.json of a word-level tokenizer over ``texts``' most frequent words (at most
    ``vocab_size`` entries, special tokens included)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    tokenizer.train_from_iterator(texts, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer.to_str()


def tokenizer_config_json(max_length: int) -> dict[str, Any]:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
            "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
            "sep_token": "[SEP]", "mask_token": "[MASK]"}


class _Rows:
    """A TextDataset (just decoded) read back by row, through a temporary stored copy."""

    def __init__(self, dataset):
        from worker.engine.data.text import TextRows

        self._dir = tempfile.TemporaryDirectory()
        path = Path(self._dir.name) / "text.safetensors"
        dataset.save(path)
        self.rows = TextRows(path)

    def close(self) -> None:
        self.rows.close()
        self._dir.cleanup()


def tokenized_text(rows, given: dict[str, Any], input_shape: list[int] | None = None,
                   tokenizer_path: Path | None = None
                   ) -> tuple[HFTextConfig, str, tuple[TokenBatch, torch.Tensor, TokenBatch,
                                                       torch.Tensor]]:
    """A text classifier's config, its tokenizer.json and ``(x_train, y_train, x_test,
    y_test)``: the texts of ``rows`` (a :class:`~worker.engine.data.text.TextRows`) tokenized
    by ``tokenizer_path``'s tokenizer, else by a word-level one built from the training texts
    (as many words as ``hf_config.vocab_size``). ``given`` is the architecture config, its
    hf_config's labels already the data's; it gains ``tokenizer_sha256``."""
    if tokenizer_path is not None:
        tokenizer_json = Path(tokenizer_path).read_text()
    else:
        vocab = int(given["hf_config"].get("vocab_size", 30522))
        tokenizer_json = word_level_tokenizer(rows.texts("train", range(rows.num_train)), vocab)
    given["tokenizer_sha256"] = hashlib.sha256(tokenizer_json.encode()).hexdigest()
    config = HFTextConfig.model_validate(
        {"num_classes": rows.num_classes, "input_shape": list(input_shape or []), **given})
    config.tokenizer_config = config.tokenizer_config or tokenizer_config_json(config.max_length)
    tokenizer = load_tokenizer(tokenizer_json, config.tokenizer_config, config.max_length)
    tensors = tokenize_source(tokenizer, rows)
    x_train, x_test = (TokenBatch({k.split(".", 1)[1]: v for k, v in tensors.items()
                                   if k.startswith(f"{split}.")}) for split in ("train", "test"))
    return config, tokenizer_json, (x_train, torch.from_numpy(rows.y_train), x_test,
                                    torch.from_numpy(rows.y_test))


def train_hf_from_file(dataset_path: Path, architecture: str,
                       architecture_config: dict[str, Any] | None, *, out_dir: Path,
                       epochs: int | None = None, seed: int = 0,
                       recipe: dict[str, Any] | None = None, device: torch.device | None = None,
                       tokenizer_path: Path | None = None, columns=None,
                       show_progress: bool = True) -> dict[str, Any]:
    """``lethe train`` for ``hf-image-classifier`` and ``hf-text-classifier``: build the model
    from ``architecture_config["hf_config"]`` (its labels set to the dataset's classes), train
    it and write a from_pretrained folder to ``out_dir``."""
    from worker.engine.data.formats import load_dataset_file
    from worker.engine.device import pick_device
    from worker.engine.metrics import accuracy
    from worker.engine.training import (
        TrainingRecipe,
        _epoch_bar,
        save_state_dict,
        seeded,
        train,
    )

    started = time.perf_counter()
    dataset_path, out_dir = Path(dataset_path), Path(out_dir)
    entry = ARCHITECTURES.get(architecture)
    given = dict(architecture_config or {})
    if "hf_config" not in given:
        raise ValueError("architecture_config: needs hf_config, the model's config.json")
    data = load_dataset_file(dataset_path, dataset_path.name, columns=columns)
    classes = [str(c) for c in data.classes]
    given["hf_config"] = with_labels(given["hf_config"], classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    text = entry.config_model is HFTextConfig
    reader = None
    try:
        if text:
            reader = _Rows(data)
            config, tokenizer_json, (x_train, y_train, x_test, y_test) = tokenized_text(
                reader.rows, given, list(data.input_shape), tokenizer_path)
            tok_config = config.tokenizer_config
            (out_dir / TOKENIZER).write_text(tokenizer_json)
            (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(tok_config, indent=2))
            files |= {"tokenizer": str(out_dir / TOKENIZER),
                      "tokenizer_config": str(out_dir / TOKENIZER_CONFIG)}
        else:
            config = HFImageConfig.model_validate(
                {"num_classes": len(classes), "input_shape": list(data.input_shape), **given})
            arrays = data
            stats = (normalisation(config.preprocessor, config.input_shape[0])
                     if config.preprocessor else None)
            if stats is not None:
                import dataclasses

                arrays = dataclasses.replace(arrays, mean=np.array(stats[0], np.float32),
                                             std=np.array(stats[1], np.float32))
                (out_dir / PREPROCESSOR).write_text(json.dumps(config.preprocessor, indent=2))
                files["preprocessor_config"] = str(out_dir / PREPROCESSOR)
            x_train, x_test = arrays.inputs(arrays.x_train), arrays.inputs(arrays.x_test)
            y_train, y_test = torch.from_numpy(data.y_train), torch.from_numpy(data.y_test)
    finally:
        if reader is not None:
            reader.close()
        if hasattr(data, "close"):
            data.close()
    overrides = {"seed": seed} | ({"epochs": epochs} if epochs is not None else {})
    training_config = TrainingRecipe.model_validate(
        {**(entry.default_recipe or {}), **(recipe or {}), **overrides})
    device = device or pick_device()
    with seeded(seed):
        model = entry.build(config)
        bar, advance = _epoch_bar(training_config.epochs, show_progress)
        with bar:
            train(model, x_train, y_train, training_config, device, progress=advance)
    config_dict = config.model_dump(mode="json")
    summary = {
        "out_path": str(out_dir),
        "architecture": architecture,
        "architecture_config": config_dict,
        "training_config": training_config.model_dump(mode="json"),
        "num_train": len(y_train),
        "num_test": len(y_test),
        "train_accuracy": accuracy(model, x_train, y_train, device),
        "test_accuracy": accuracy(model, x_test, y_test, device),
    }
    (out_dir / CONFIG).write_text(json.dumps(config.hf_config, indent=2, sort_keys=True))
    save_state_dict(model, out_dir / WEIGHTS, metadata={
        "format": "pt",  # what transformers' from_pretrained looks for
        **{key: json.dumps(summary[key])
           for key in ("architecture", "architecture_config", "training_config")}})
    summary["files"] = {"weights": str(out_dir / WEIGHTS), "config": str(out_dir / CONFIG),
                        **files}
    summary["duration_s"] = round(time.perf_counter() - started, 3)
    return summary


def model_inputs_of(dataset_path: Path, summary: dict[str, Any], folder: Path,
                    columns=None) -> tuple[Any, torch.Tensor, Any, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of a dataset file as a job feeds them to the
    model :func:`train_hf_from_file` wrote to ``folder``: normalised pixels, or token ids."""
    from worker.engine.data.formats import load_dataset_file

    config = summary["architecture_config"]
    data = load_dataset_file(Path(dataset_path), Path(dataset_path).name, columns=columns)
    if summary["architecture"] != "hf-text-classifier":
        preprocessor = config.get("preprocessor")
        stats = normalisation(preprocessor, config["input_shape"][0]) if preprocessor else None
        if stats is not None:
            import dataclasses

            data = dataclasses.replace(data, mean=np.array(stats[0], np.float32),
                                       std=np.array(stats[1], np.float32))
        return (data.inputs(data.x_train), torch.from_numpy(data.y_train),
                data.inputs(data.x_test), torch.from_numpy(data.y_test))
    reader = _Rows(data)
    try:
        tokenizer = load_tokenizer((Path(folder) / TOKENIZER).read_text(),
                                   config["tokenizer_config"], config["max_length"])
        tensors = tokenize_source(tokenizer, reader.rows)
        labels = (torch.from_numpy(reader.rows.y_train.copy()),
                  torch.from_numpy(reader.rows.y_test.copy()))
    finally:
        reader.close()
        data.close()
    x_train, x_test = (TokenBatch({k.split(".", 1)[1]: v for k, v in tensors.items()
                                   if k.startswith(f"{split}.")}) for split in ("train", "test"))
    return x_train, labels[0], x_test, labels[1]
