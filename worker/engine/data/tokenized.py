"""Text tokenized once per (dataset blob, tokenizer), kept as safetensors, never again per job.

A text classifier's inputs are its own tokenizer's ``input_ids`` and ``attention_mask``.
Tokenizing a dataset is the slow part of reading it, so it happens once: the result is a
safetensors blob holding ``train.input_ids``, ``train.attention_mask``, ``test.input_ids`` and
``test.attention_mask`` (int64, ``N×L``, right-padded to the longest text, at most
``max_length``), which every later job of any model with the same tokenizer on the same
dataset blob loads as it is. The key is ``(the dataset blob's sha256, tokenizer_digest)``:
the blob is content addressed and an erasure writes a new one, so tokens of erased text are
never served from the cache (the worker deletes caches whose blob is gone).

The tokenizer is read from its ``tokenizer.json`` with the ``tokenizers`` library
(``Tokenizer.from_str``): a JSON description of a normaliser, a pre-tokeniser, a vocabulary
and a post-processor; no code is loaded. ``tokenizer_config.json`` contributes its pad token.

Texts come from anything with ``texts(split, rows) -> list[str]`` and ``num_rows(split)``
(:class:`worker.engine.data.text.TextRows`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from worker.engine.inputs import TokenBatch

SPLITS = ("train", "test")
FIELDS = ("input_ids", "attention_mask")
# Texts tokenized per call of the tokenizer (its batch encoding runs in Rust threads).
TOKENIZE_BATCH = 4096
# Characters of one text handed to the tokenizer: a text longer than this is cut first (a
# hostile 100 MB row would otherwise be tokenized whole before truncation to max_length).
MAX_TEXT_CHARS = 100_000


class TextSource(Protocol):
    def num_rows(self, split: str) -> int: ...

    def texts(self, split: str, rows) -> list[str]: ...


class TokenizerError(ValueError):
    """A tokenizer.json (or tokenizer_config.json) this service cannot use."""


def _token_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def load_tokenizer(tokenizer_json: bytes | str, tokenizer_config: dict[str, Any] | None = None,
                   max_length: int = 128):
    """A ``tokenizers.Tokenizer`` that truncates to ``max_length`` and pads with the
    configured pad token (tokenizer_config's ``pad_token``, else the tokenizer's own padding,
    else ``[PAD]``, ``<pad>`` or id 0)."""
    from tokenizers import Tokenizer

    text = tokenizer_json.decode("utf-8") if isinstance(tokenizer_json, bytes) else tokenizer_json
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - the library raises its own exception type
        raise TokenizerError(f"tokenizer.json: not a tokenizer the tokenizers library reads "
                             f"({exc})") from None
    config = tokenizer_config or {}
    pad_token = _token_of(config.get("pad_token"))
    padding = tokenizer.padding
    if pad_token is None and padding:
        pad_token = padding.get("pad_token")
    candidates = [pad_token] if pad_token else ["[PAD]", "<pad>"]
    pad_id = next((tokenizer.token_to_id(t) for t in candidates
                   if t and tokenizer.token_to_id(t) is not None), None)
    if pad_token and pad_id is None:
        raise TokenizerError(f"tokenizer_config.pad_token {pad_token!r} is not in the "
                             "tokenizer's vocabulary")
    if pad_id is None:
        pad_id, pad_token = 0, tokenizer.id_to_token(0) or "[PAD]"
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token or "[PAD]", direction="right")
    return tokenizer


def tokenizer_digest(tokenizer_sha256: str, tokenizer_config: dict[str, Any] | None,
                     max_length: int) -> str:
    """What determines the token ids: the tokenizer file, its config and the length cap."""
    identity = json.dumps({"tokenizer": tokenizer_sha256, "config": tokenizer_config or {},
                           "max_length": max_length, "format": 1}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()


def tokenize(tokenizer, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (int64, right-padded to the longest row)."""
    ids: list[list[int]] = []
    masks: list[list[int]] = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        chunk = [text[:MAX_TEXT_CHARS] for text in texts[start:start + TOKENIZE_BATCH]]
        for encoding in tokenizer.encode_batch(chunk):
            ids.append(encoding.ids)
            masks.append(encoding.attention_mask)
    width = max((len(row) for row in ids), default=1) or 1
    input_ids = torch.zeros(len(ids), width, dtype=torch.int64)
    attention_mask = torch.zeros(len(ids), width, dtype=torch.int64)
    pad = tokenizer.padding["pad_id"] if tokenizer.padding else 0
    input_ids.fill_(pad)
    for row, (row_ids, row_mask) in enumerate(zip(ids, masks, strict=True)):
        input_ids[row, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.int64)
        attention_mask[row, :len(row_mask)] = torch.tensor(row_mask, dtype=torch.int64)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def tokenize_source(tokenizer, source: TextSource,
                    progress: Callable[[float], None] | None = None) -> dict[str, torch.Tensor]:
    """Every row of both splits, as the cache stores them (``train.input_ids``, …)."""
    out = {}
    for index, split in enumerate(SPLITS):
        count = source.num_rows(split)
        texts = source.texts(split, range(count)) if count else []
        for name, tensor in tokenize(tokenizer, texts).items():
            out[f"{split}.{name}"] = tensor
        if progress is not None:
            progress((index + 1) / len(SPLITS))
    return out


def write_tokenized(tensors: dict[str, torch.Tensor], path: Path, digest: str,
                    source_sha256: str) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"tokenizer_digest": digest, "source": source_sha256})


def read_tokenized(path: Path) -> tuple[TokenBatch, TokenBatch]:
    """The cached train and test inputs, checked to hold both fields for both splits."""
    tensors = load_file(str(path))
    batches = []
    for split in SPLITS:
        fields = {name: tensors.get(f"{split}.{name}") for name in FIELDS}
        if any(t is None or t.dtype != torch.int64 or t.dim() != 2 for t in fields.values()):
            raise ValueError(f"{path}: not a tokenized dataset (split {split})")
        batches.append(TokenBatch(fields))
    return batches[0], batches[1]
