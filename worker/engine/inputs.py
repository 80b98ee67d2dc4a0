"""Model inputs that are not one float tensor: a batch of named tensors (text's ``input_ids``
and ``attention_mask``), indexed, moved and concatenated like a tensor.

Every method treats ``data.x_train`` as "rows of model input": it indexes rows
(``x[idx]``), takes ``len(x)``, moves a batch with ``.to(device)``, concatenates sets with
``torch.cat`` and calls ``model(batch)``. An image or feature dataset gives a float tensor;
a text dataset gives a :class:`TokenBatch`, which does all of that on every tensor it holds
at once, so the methods need no branch of their own for text. A model that takes a
``TokenBatch`` (the Hugging Face text classifiers) reads its fields by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch


class TokenBatch(Mapping[str, torch.Tensor]):
    """Named tensors sharing their first dimension (rows): ``input_ids``, ``attention_mask``,
    optionally ``token_type_ids`` or ``inputs_embeds``. Immutable; indexing returns a new one."""

    __slots__ = ("_tensors",)

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None, **named: torch.Tensor):
        merged = dict(tensors or {}) | named
        if not merged:
            raise ValueError("a TokenBatch needs at least one tensor")
        rows = {len(t) for t in merged.values()}
        if len(rows) != 1:
            raise ValueError(f"a TokenBatch's tensors must share their rows; got "
                             f"{ {k: tuple(t.shape) for k, t in merged.items()} }")
        self._tensors = merged

    # Mapping ------------------------------------------------------------------------------
    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return self._tensors[key]
        return TokenBatch({name: t[key] for name, t in self._tensors.items()})

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(next(iter(self._tensors.values())))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(t.shape)}" for k, t in self._tensors.items())
        return f"TokenBatch({shapes})"

    # Tensor-like --------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        """The shape of the main field (``input_ids``, else ``inputs_embeds``)."""
        return self.main.shape

    @property
    def main(self) -> torch.Tensor:
        for key in ("input_ids", "inputs_embeds"):
            if key in self._tensors:
                return self._tensors[key]
        return next(iter(self._tensors.values()))

    @property
    def device(self) -> torch.device:
        return self.main.device

    def dim(self) -> int:
        return self.main.dim()

    def to(self, *args: Any, **kwargs: Any) -> TokenBatch:
        return TokenBatch({k: t.to(*args, **kwargs) for k, t in self._tensors.items()})

    def cpu(self) -> TokenBatch:
        return self.to("cpu")

    def detach(self) -> TokenBatch:
        return TokenBatch({k: t.detach() for k, t in self._tensors.items()})

    def clone(self) -> TokenBatch:
        return TokenBatch({k: t.clone() for k, t in self._tensors.items()})

    def repeat_interleave(self, repeats, dim: int = 0) -> TokenBatch:
        return TokenBatch({k: t.repeat_interleave(repeats, dim) for k, t in self._tensors.items()})

    def trimmed(self) -> TokenBatch:
        """The same rows without the padding columns no row uses (right padding), so a batch
        of short texts does not pay for the longest text of the dataset."""
        mask = self._tensors.get("attention_mask")
        if mask is None or mask.dim() != 2 or len(mask) == 0:
            return self
        used = mask.any(0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        if width == mask.shape[1]:
            return self
        return TokenBatch({k: t[:, :width] if t.dim() >= 2 and t.shape[1] == mask.shape[1]
                           else t for k, t in self._tensors.items()})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._tensors)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """``torch.cat`` of batches concatenates field by field; nothing else is defined."""
        kwargs = kwargs or {}
        if func is torch.cat:
            batches = list(args[0] if args else kwargs["tensors"])
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim != 0 or not all(isinstance(b, TokenBatch) for b in batches):
                raise TypeError("TokenBatch: torch.cat joins TokenBatches on their rows only")
            return concatenate(batches)
        raise TypeError(f"TokenBatch does not support {getattr(func, '__name__', func)}")


def concatenate(batches: list[TokenBatch]) -> TokenBatch:
    """Rows of every batch, in order; fields must agree, and sequences are right-padded with
    zeros (mask 0) to the longest."""
    keys = list(batches[0])
    if any(list(b) != keys for b in batches):
        raise TypeError("TokenBatch: cannot join batches whose fields differ: "
                        f"{[list(b) for b in batches]}")
    out = {}
    for key in keys:
        parts = [b[key] for b in batches]
        if parts[0].dim() >= 2:
            width = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1]))
                     if p.shape[1] < width else p for p in parts]
        out[key] = torch.cat(parts)
    return TokenBatch(out)

