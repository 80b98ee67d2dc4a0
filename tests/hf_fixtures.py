"""Tiny Hugging Face classifiers and the data they learn, made by the tests themselves: no
download. A 2-layer ViT on 8×8 images of three colour patterns; a 2-layer BERT on sentences
whose class is the topic of their words, with a word-level tokenizer over those words."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

IMAGE_CLASSES = 3
IMAGE_SIZE = 8


def vit_config(**overrides) -> dict:
    return {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "image_size": IMAGE_SIZE,
            "patch_size": 4, "num_channels": 3, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "num_labels": IMAGE_CLASSES} | overrides


def bert_config(vocab_size: int = 64, **overrides) -> dict:
    return {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": vocab_size,
            "max_position_embeddings": 32, "type_vocab_size": 2, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "num_labels": len(TOPICS)} | overrides


def image_npz(path: Path, train_per_class: int = 100, test_per_class: int = 40,
              seed: int = 0, noise: float = 45.0, signal: float = 150.0) -> Path:
    """Three classes, each a colour and a stripe direction (``signal`` strong), under noise
    (std ``noise``)."""
    rng = np.random.default_rng(seed)

    def images(per_class: int):
        xs, ys = [], []
        for label in range(IMAGE_CLASSES):
            base = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
            base[..., label] = signal
            if label == 1:
                base[::2, :, :] += signal * 8 / 15
            elif label == 2:
                base[:, ::2, :] += signal * 8 / 15
            pixels = rng.normal(0, noise, (per_class, IMAGE_SIZE, IMAGE_SIZE, 3))
            xs.append(np.clip(base + pixels, 0, 255).astype(np.uint8))
            ys.append(np.full(per_class, label, np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = images(train_per_class)
    x_test, y_test = images(test_per_class)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


TOPICS = {
    "colour": ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"],
    "fruit": ["apple", "pear", "plum", "grape", "lemon", "cherry", "mango", "peach"],
    "animal": ["cat", "dog", "fox", "horse", "mouse", "tiger", "zebra", "whale"],
}
FILLER = ["the", "a", "of", "and", "with", "very", "some", "my", "your", "this", "that", "big",
          "small"]


def text_rows(per_class_train: int = 80, per_class_test: int = 30,
              seed: int = 0, other: float = 0.3, others: int = 1) -> list[list[str]]:
    """``[id, text, label, split]`` rows: two or three topic words among filler words, and
    with probability ``other`` up to ``others`` words of another topic (so the model has to
    weigh them)."""
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    rows = []
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for label in names:
            for i in range(count):
                words = list(rng.choice(FILLER, rng.integers(2, 5)))
                words += list(rng.choice(TOPICS[label], rng.integers(2, 4)))
                if rng.random() < other:
                    neighbour = names[(names.index(label) + 1) % len(names)]
                    words += list(rng.choice(TOPICS[neighbour], rng.integers(1, others + 1)))
                rng.shuffle(words)
                rows.append([f"{split}-{label}-{i}", " ".join(words), label, split])
    return rows


def text_csv(path: Path, **kwargs) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text", "label", "split"])
    writer.writerows(text_rows(**kwargs))
    path.write_text(out.getvalue())
    return path


TEXT_COLUMNS = {"text_column": "text", "label_column": "label", "split_column": "split",
                "id_column": "id"}


def write_json(path: Path, value: dict) -> Path:
    path.write_text(json.dumps(value))
    return path
