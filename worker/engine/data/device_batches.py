"""Mini-batches sliced where the model computes: the training arrays are moved to the device
once, and each batch is taken there with a shuffled index and augmented there.

On a GPU this replaces a host-to-device copy per batch (and the CPU's share of the crop and
flip) with one copy of the arrays per training run (per pass for the methods' loops, which
get a fresh subset each pass). The batches are exactly those :func:`~worker.engine.training.
iterate_batches` and :func:`~worker.engine.training.augment_images` give on a CPU for the same
generator: the order and the crop offsets and flips are still drawn from the CPU generator,
in the same sequence (a permutation per pass, then per batch the row offsets, the column
offsets and the flips), and only the indices travel to the device, once per pass. So a run
on a GPU sees the same samples in the same order, with the same crops, as the same run on a
CPU; only floating-point results differ (bf16 autocast, other kernels).

On a CPU the engine keeps its original path (``iterate_batches`` without ``device``, or
with a CPU one); this module runs there too, with ``device="cpu"``, which is how the tests
check it against that path.

The arrays stay in the dtype the loaders give (float32 model inputs); CIFAR-10's training
split is 600 MiB of it, a small share of a data-centre GPU. Arrays that would take more than
:data:`MAX_DEVICE_SHARE` of the device's memory (or more than is free) stay on the host and
are copied batch by batch, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from worker.engine.device import image_layout, on_gpu

# Largest share of the GPU's memory the resident arrays may take.
MAX_DEVICE_SHARE = 0.25
PAD = 4  # the crop's padding: offsets 0..8 of a 4-pixel-padded image
Shifts = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # row offsets, column offsets, flips


def nbytes(x: Any) -> int:
    """Bytes of a tensor, a TokenBatch's tensors, or anything with a shape and a dtype."""
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if hasattr(x, "as_dict"):  # TokenBatch
        return sum(nbytes(t) for t in x.as_dict().values())
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", torch.float32)
    if shape is None:
        return 0
    count = 1
    for d in shape:
        count *= int(d)
    return count * torch.empty(0, dtype=dtype).element_size()


def fits_on(device: torch.device | str, *arrays: Any) -> bool:
    """Whether ``arrays`` may live on ``device`` for a run: always on a CPU; on a GPU when
    they take at most MAX_DEVICE_SHARE of its memory and less than is free."""
    if not on_gpu(device):
        return True
    free, total = torch.cuda.mem_get_info(torch.device(device))
    need = sum(nbytes(a) for a in arrays)
    return need <= MAX_DEVICE_SHARE * total and need < free


def to_device(x: Any, device: torch.device | str) -> Any:
    """``x`` on ``device``: a tensor or TokenBatch moved (not copied when already there), a
    lazily read split (``LazyInputs``) read in full first; images channels-last on a GPU."""
    if not hasattr(x, "to"):
        x = x[0:len(x)]
    x = x.to(device, non_blocking=True)
    return image_layout(x) if on_gpu(device) else x


def draw_shifts(sizes: Sequence[int], generator: torch.Generator | None) -> Shifts:
    """Crop offsets and flips for consecutive batches of ``sizes`` rows, drawn from the
    (CPU) generator exactly as ``augment_images`` draws them batch by batch, concatenated."""
    dy, dx, flip = [], [], []
    for n in sizes:
        dy.append(torch.randint(0, 2 * PAD + 1, (n,), generator=generator))
        dx.append(torch.randint(0, 2 * PAD + 1, (n,), generator=generator))
        flip.append(torch.rand(n, generator=generator) < 0.5)
    if not sizes:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty.bool()
    return torch.cat(dy), torch.cat(dx), torch.cat(flip)


def shift_and_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                   flip: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (``N×C×H×W``) cropped at offsets (dy, dx) of its 4-pixel-padded
    version (reflect padding, constant for images of at most 4 pixels a side) and mirrored
    left to right where ``flip``: the values ``augment_images`` computes, on whatever device
    ``x`` is on, without a host synchronisation (a ``where``, not a boolean-mask write)."""
    n, _, h, w = x.shape
    device = x.device
    padded = F.pad(x, (PAD, PAD, PAD, PAD), mode="reflect" if min(h, w) > PAD else "constant")
    rows = dy.to(device)[:, None] + torch.arange(h, device=device)[None, :]
    cols = dx.to(device)[:, None] + torch.arange(w, device=device)[None, :]
    batch = torch.arange(n, device=device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # N×H×W×C
    out = out.permute(0, 3, 1, 2)  # N×C×H×W, channels-last in memory
    return torch.where(flip.to(device)[:, None, None, None], out.flip(-1), out)


class DeviceBatches:
    """``(x, y)`` held on ``device``, served as shuffled (optionally augmented) mini-batches
    pass after pass. Built once per training run; :meth:`epoch` is one pass."""

    def __init__(self, x: Any, y: torch.Tensor, device: torch.device | str):
        self.device = torch.device(device)
        self.x = to_device(x, self.device)
        self.y = y.to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return len(self.y)

    def epoch(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
              drop_last: bool = False, augment: bool = False
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass, batch for batch what ``iterate_batches`` (then ``augment_images`` on
        each batch, when ``augment`` and the inputs are images) gives for this generator.
        Every draw happens at the first batch, as the CPU path's permutation does."""
        n = len(self.y)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        end = n - n % batch_size if drop_last and n > batch_size else n
        starts = range(0, end, batch_size)
        images = augment and isinstance(self.x, torch.Tensor) and self.x.dim() == 4
        if images:
            sizes = [min(batch_size, end - start) for start in starts]
            shifts = tuple(t.to(self.device, non_blocking=True)
                           for t in draw_shifts(sizes, generator))
        order = order.to(self.device, non_blocking=True)
        for start in starts:
            idx = order[start:start + batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if images:
                dy, dx, flip = (t[start:start + batch_size] for t in shifts)
                xb = shift_and_flip(xb, dy, dx, flip)
            elif on_gpu(self.device):
                xb = image_layout(xb)
            yield xb, yb


def device_batches(x: Any, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                   generator: torch.Generator | None = None, drop_last: bool = False,
                   device: torch.device | str, augment: bool = False
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass of :class:`DeviceBatches` over ``(x, y)`` (moved to ``device`` at the first
    batch): what ``iterate_batches(..., device=...)`` gives on a GPU."""
    yield from DeviceBatches(x, y, device).epoch(batch_size, shuffle=shuffle,
                                                 generator=generator, drop_last=drop_last,
                                                 augment=augment)
