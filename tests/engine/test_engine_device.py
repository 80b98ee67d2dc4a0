"""The GPU path's pieces, checked on the CPU: device-resident batches and their augmentation,
the autocast and layout helpers, and that a CPU run trains exactly as it did before them."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.data.device_batches import (
    DeviceBatches,
    device_batches,
    draw_shifts,
    fits_on,
    shift_and_flip,
)
from worker.engine.device import (
    GPU_EVAL_BATCH,
    autocast_for,
    channels_last,
    compiling,
    eval_batch_size,
    image_layout,
    maybe_compiled,
)
from worker.engine.training import (
    TrainingRecipe,
    augment_images,
    has_batch_norm,
    iterate_batches,
    make_optimizer,
    make_scheduler,
    seeded_generator,
    train,
)

CPU = torch.device("cpu")


def images(n: int = 50, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator), torch.arange(n)


def host_pass(x, y, batch_size, generator, *, drop_last=False, augment=False):
    """The CPU path: batches sliced on the host, then augmented one by one."""
    out = []
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=True, generator=generator,
                                  drop_last=drop_last):
        out.append((augment_images(xb, generator) if augment else xb, yb))
    return out


@pytest.mark.parametrize("drop_last", [False, True])
def test_resident_batches_are_the_host_batches_pass_after_pass(drop_last):
    x, y = images(50)
    resident = DeviceBatches(x, y, CPU)
    host_generator, resident_generator = seeded_generator(3), seeded_generator(3)
    for _ in range(3):  # the generator's state carries over from pass to pass in both
        expected = host_pass(x, y, 16, host_generator, drop_last=drop_last)
        got = list(resident.epoch(16, shuffle=True, generator=resident_generator,
                                  drop_last=drop_last))
        assert [len(b) for b, _ in got] == ([16, 16, 16] if drop_last else [16, 16, 16, 2])
        for (xb, yb), (xe, ye) in zip(got, expected, strict=True):
            assert torch.equal(yb, ye) and torch.equal(xb, xe)


def test_a_resident_pass_covers_every_row_once():
    x, y = images(50)
    rows = torch.cat([yb for _, yb in DeviceBatches(x, y, CPU).epoch(
        16, shuffle=True, generator=seeded_generator(0))])
    assert sorted(rows.tolist()) == list(range(50))
    unshuffled = torch.cat([yb for _, yb in device_batches(x, y, 16, shuffle=False,
                                                           device=CPU)])
    assert unshuffled.tolist() == list(range(50))


def test_resident_augmentation_is_the_host_augmentation():
    x, y = images(40, size=8)
    resident = DeviceBatches(x, y, CPU)
    host_generator, resident_generator = seeded_generator(7), seeded_generator(7)
    for _ in range(2):
        expected = host_pass(x, y, 16, host_generator, drop_last=True, augment=True)
        got = list(resident.epoch(16, shuffle=True, generator=resident_generator,
                                  drop_last=True, augment=True))
        for (xb, yb), (xe, ye) in zip(got, expected, strict=True):
            assert torch.equal(yb, ye) and torch.equal(xb, xe)
    # What follows in the generator is the same too: the draws were the same draws.
    assert torch.equal(torch.rand(4, generator=host_generator),
                       torch.rand(4, generator=resident_generator))


def test_augmentation_skips_inputs_that_are_not_images():
    x, y = torch.randn(20, 6), torch.arange(20)
    got = list(DeviceBatches(x, y, CPU).epoch(8, shuffle=True, generator=seeded_generator(1),
                                              augment=True))
    expected = host_pass(x, y, 8, seeded_generator(1), augment=True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, expected, strict=True))


def test_shift_and_flip_crops_and_mirrors():
    x, _ = images(3, size=8)
    centre = torch.full((3,), 4)
    keep = torch.zeros(3, dtype=torch.bool)
    out = shift_and_flip(x, centre, centre, keep)
    assert out.shape == x.shape and torch.equal(out, x)  # offset 4 of 0..8: the image itself
    assert torch.equal(shift_and_flip(x, centre, centre, ~keep), x.flip(-1))
    # Offsets (0, 0): the image moved 4 down and right, reflected into the border.
    corner = shift_and_flip(x, torch.zeros(3, dtype=torch.long),
                            torch.zeros(3, dtype=torch.long), keep)
    assert torch.equal(corner[..., 4:, 4:], x[..., :4, :4])
    assert torch.equal(corner[..., 4, 0], x[..., 0, 4])  # reflect: column 4 mirrors to 0
    # Offsets (8, 8) the other way; each row of the batch gets its own offsets and flip.
    mixed = shift_and_flip(x, torch.tensor([8, 4, 4]), torch.tensor([8, 4, 4]),
                           torch.tensor([False, True, False]))
    assert torch.equal(mixed[0, :, :4, :4], x[0, :, 4:, 4:])
    assert torch.equal(mixed[1], x[1].flip(-1)) and torch.equal(mixed[2], x[2])
    assert mixed.is_contiguous(memory_format=torch.channels_last)


def test_shift_and_flip_matches_augment_images_for_the_same_draws():
    for size in (8, 3):  # 3×3 images pad with zeros rather than reflect
        x, _ = images(12, size=size)
        expected = augment_images(x, seeded_generator(5))
        dy, dx, flip = draw_shifts([12], seeded_generator(5))
        assert torch.equal(shift_and_flip(x, dy, dx, flip), expected)


def test_resident_batches_are_deterministic_under_a_seed():
    x, y = images(32)

    def run(seed):
        return [xb for xb, _ in DeviceBatches(x, y, CPU).epoch(
            8, shuffle=True, generator=seeded_generator(seed), augment=True)]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_iterate_batches_keeps_its_host_path_on_a_cpu():
    x, y = images(30)
    plain = list(iterate_batches(x, y, 8, shuffle=True, generator=seeded_generator(2)))
    with_cpu = list(iterate_batches(x, y, 8, shuffle=True, generator=seeded_generator(2),
                                    device=CPU))
    for (xa, ya), (xb, yb) in zip(plain, with_cpu, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert fits_on(CPU, x, y)


def test_the_gpu_helpers_do_nothing_on_a_cpu():
    model = nn.Conv2d(3, 4, 3)
    for context in (autocast_for(CPU), autocast_for("cpu"), autocast_for(None),
                    autocast_for(CPU, enabled=False)):
        assert isinstance(context, contextlib.nullcontext)
        with context:
            assert not torch.is_autocast_enabled()
            assert model(torch.randn(1, 3, 5, 5)).dtype == torch.float32
    assert eval_batch_size(CPU, 256) == 256 and eval_batch_size(None, 512) == 512
    assert eval_batch_size(torch.device("cuda"), 256) == GPU_EVAL_BATCH
    with compiling(True):
        assert maybe_compiled(model, CPU) is model
    flat = torch.randn(2, 5)
    assert image_layout(flat) is flat
    assert image_layout(torch.randn(2, 3, 4, 4)).is_contiguous(
        memory_format=torch.channels_last)
    with channels_last(model):
        assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.weight.is_contiguous()


def _train_as_before(model, x, y, recipe, device):
    """``train`` as it was before the GPU path (a copy), for the CPU comparison."""
    generator = seeded_generator(recipe.seed)
    model.to(device).train()
    optimizer = make_optimizer(model.parameters(), recipe)
    drop_last = has_batch_norm(model) and len(x) > recipe.batch_size
    steps_per_epoch = (len(x) // recipe.batch_size if drop_last
                       else max(1, -(-len(x) // recipe.batch_size)))
    scheduler = make_scheduler(optimizer, recipe, recipe.epochs * steps_per_epoch)
    for _ in range(recipe.epochs):
        for xb, yb in iterate_batches(x, y, recipe.batch_size, shuffle=True, generator=generator,
                                      drop_last=drop_last):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if recipe.augment:
                xb = augment_images(xb, generator)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def test_training_on_a_cpu_is_bit_for_bit_what_it_was():
    x, _ = images(72, size=6)
    y = torch.arange(72) % 3
    recipe = TrainingRecipe(epochs=2, batch_size=16, lr=0.05, augment=True, warmup_ratio=0.1)

    def fresh():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    now, before = train(fresh(), x, y, recipe, CPU), _train_as_before(fresh(), x, y, recipe, CPU)
    for (name, a), (_, b) in zip(now.state_dict().items(), before.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
