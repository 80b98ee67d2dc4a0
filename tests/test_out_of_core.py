"""A job's data path on a dataset several times larger than the memory it is allowed.

The dataset (about 320 MB of float32 features) is written to a blob store on disk; a child
process then runs what a job runs on it, through the job's own loading code
(``worker.execution.model_inputs``): the arrays opened, D_f and samples of D_r read, a base
model trained on a sample, a class forgotten with the ``feature-constraint`` method at its
defaults (it reads D_f and capped samples of D_r), the job's evaluation and the acceptance
gate's samples. The child's peak resident memory (``VmHWM``) above its own baseline (the
interpreter, torch, the engine and the model, measured in the same process just before the
dataset is opened) must stay under 100 MB: less than a third of the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROWS, FEATURES, TEST_ROWS, CLASSES = 300_000, 256, 12_000, 10
BUDGET_MB = 100
RARE = CLASSES - 1
BLOCK = 20_000


def write_features_dataset(path: Path, seed: int = 0) -> None:
    """A learnable ``ROWS×FEATURES`` float32 dataset as the arrays' safetensors layout,
    generated and written a block at a time (the test itself never holds it either)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.6, size=(CLASSES, FEATURES)).astype(np.float32)
    share = np.full(CLASSES, 1.0)
    share[RARE] = 0.1  # the class forgotten below: about 1% of the rows
    share /= share.sum()
    labels = {"train": rng.choice(CLASSES, ROWS, p=share),
              "test": rng.choice(CLASSES, TEST_ROWS, p=share)}
    shapes = {"x_train": (ROWS, FEATURES), "y_train": (ROWS,), "x_test": (TEST_ROWS, FEATURES),
              "y_test": (TEST_ROWS,), "mean": (FEATURES,), "std": (FEATURES,)}
    dtypes = {"x_train": "F32", "x_test": "F32", "y_train": "I64", "y_test": "I64",
              "mean": "F32", "std": "F32"}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * (8 if dtypes[name] == "I64" else 4)
        header[name] = {"dtype": dtypes[name], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"ids_train": json.dumps([str(i) for i in range(ROWS)]),
                              "classes": json.dumps([str(c) for c in range(CLASSES)]),
                              "subjects_train": "null"}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for split, rows in (("train", ROWS), ("test", TEST_ROWS)):
            for start in range(0, rows, BLOCK):
                y = labels[split][start : start + BLOCK]
                x = rng.standard_normal((len(y), FEATURES), dtype=np.float32) + centres[y]
                out.write(x.astype("<f4").tobytes())
            out.write(labels[split].astype("<i8").tobytes())
        out.write(np.zeros(FEATURES, "<f4").tobytes())
        out.write(np.ones(FEATURES, "<f4").tobytes())


CHILD = textwrap.dedent("""
    import json, sys, time

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MB

    import torch
    torch.set_num_threads(1)
    from worker import execution
    from worker.engine.architectures import build_model
    from worker.engine.gate import gate_rows
    from worker.engine.methods import METHODS, UnlearningData, UnlearningTask
    from worker.engine.metrics import evaluate
    from worker.engine.training import TrainingRecipe, train

    device = torch.device("cpu")
    rows, features, classes = (int(a) for a in sys.argv[2:5])
    def fresh():
        return build_model("mlp", {"num_classes": classes, "input_shape": [features],
                                   "hidden": [64]})
    model = fresh()
    warm = torch.randn(256, features)
    train(model, warm, torch.randint(0, classes, (256,)), TrainingRecipe(epochs=1),
          device)  # torch's own first-use allocations belong to the baseline
    baseline = status("VmHWM")

    started = time.monotonic()
    arrays, x_train, x_test = execution.model_inputs(sys.argv[1])
    generator = torch.Generator().manual_seed(0)
    sample = torch.randperm(rows, generator=generator)[:20_000]
    train(model, x_train[sample], torch.from_numpy(arrays.y_train)[sample],
          TrainingRecipe(epochs=3, lr=0.05, batch_size=128), device)
    y_train = torch.from_numpy(arrays.y_train)
    excluded = y_train == classes - 1  # forget the rare last class, as a request would
    data = UnlearningData(
        x_train=x_train, y_train=y_train, x_test=x_test,
        y_test=torch.from_numpy(arrays.y_test), forget_idx=torch.nonzero(excluded).flatten(),
        retain_idx=torch.nonzero(~excluded).flatten(), num_classes=arrays.num_classes,
        forget_classes=[classes - 1])
    before = evaluate(model, data, device, seed=0)
    method = METHODS.get("feature-constraint")()
    task = UnlearningTask(model=model, build_fresh=fresh, data=data,
                          recipe=TrainingRecipe(epochs=3, lr=0.05, batch_size=128),
                          device=device)
    outcome = method.run(task, method.Params())
    after = evaluate(outcome.model, data, device, seed=0)
    gate = gate_rows(data, 2000, seed=0)
    print(json.dumps({
        "baseline_mb": baseline, "peak_mb": status("VmHWM"),
        "lazy": type(x_train).__name__, "seconds": time.monotonic() - started,
        "before": before, "after": after, "gate_rows": len(gate.retain_x),
        "forget_rows": len(data.forget_idx),
    }))
""")


@pytest.mark.slow
def test_a_job_on_a_dataset_larger_than_its_memory_stays_within_it(tmp_path):
    dataset = tmp_path / "features.safetensors"
    write_features_dataset(dataset)
    size_mb = dataset.stat().st_size / 2**20
    assert size_mb > 3 * BUDGET_MB

    digest = hashlib.sha256()
    with open(dataset, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    sha = digest.hexdigest()
    blobs = tmp_path / "blobs"
    (blobs / sha[:2] / sha[2:4]).mkdir(parents=True)
    dataset.rename(blobs / sha[:2] / sha[2:4] / sha)

    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env |= {"LETHE_HOME": str(tmp_path / "home"), "LETHE_STORAGE_URL": f"file://{blobs}",
            "LETHE_JOB_RESIDENT_DATASET_BYTES": str(256 << 20), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, sha, str(ROWS), str(FEATURES), str(CLASSES)],
        capture_output=True, text=True, env=env, timeout=240,
        cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    grown = report["peak_mb"] - report["baseline_mb"]
    print(f"dataset {size_mb:.0f} MB; baseline {report['baseline_mb']:.0f} MB, peak "
          f"{report['peak_mb']:.0f} MB (+{grown:.0f} MB); data path {report['seconds']:.1f} s")
    assert report["lazy"] == "LazyInputs"
    assert grown < BUDGET_MB, report
    # It really unlearned: the class was known, and is forgotten; the model still works.
    assert 1000 < report["forget_rows"] < 10_000
    assert report["before"]["forget_accuracy"] > 0.8
    assert report["after"]["forget_accuracy"] < 0.2
    assert report["after"]["retain_accuracy"] > 0.8
    assert report["gate_rows"] == 2000


@pytest.mark.parametrize("kind", ["images", "features"])
def test_lazy_inputs_hold_exactly_what_the_in_memory_inputs_hold(tmp_path, kind):
    import torch

    from worker.engine.data.arrays import DatasetArrays
    from worker.engine.data.loader import LazyInputs

    rng = np.random.default_rng(3)
    shape = (6, 5, 3) if kind == "images" else (7,)
    make = ((lambda n: rng.integers(0, 256, (n, *shape), dtype=np.uint8)) if kind == "images"
            else (lambda n: rng.normal(size=(n, *shape)).astype(np.float32)))
    arrays = DatasetArrays(x_train=make(50), y_train=rng.integers(0, 3, 50), x_test=make(9),
                           y_test=rng.integers(0, 3, 9), ids_train=[str(i) for i in range(50)],
                           classes=["a", "b", "c"])
    path = tmp_path / "arrays.safetensors"
    arrays.save(path)
    loaded = DatasetArrays.load(path)
    full = loaded.inputs(loaded.x_train)
    opened = DatasetArrays.open(path)
    lazy = LazyInputs(opened, opened.x_train)
    assert lazy.shape == full.shape and len(lazy) == 50 and list(opened.ids_train) == \
        arrays.ids_train
    mask = torch.zeros(50, dtype=torch.bool)
    mask[[0, 7, 49]] = True
    for index in (torch.tensor([9, 3, 3, 48, 0]), np.array([5, 6, 7, 8]), [1, 0], slice(3, 40, 4),
                  slice(None), -1, 17, mask, torch.zeros(0, dtype=torch.long), range(10, 13)):
        assert torch.equal(lazy[index], full[index]), index
    test = LazyInputs(opened, opened.x_test)
    assert torch.equal(test[:], loaded.inputs(loaded.x_test))
    with pytest.raises(IndexError):
        lazy[torch.tensor([50])]
    # The in-memory inputs leave the caller's arrays as they were (no normalising in place).
    np.testing.assert_array_equal(loaded.x_train, DatasetArrays.load(path).x_train)


def test_erasure_zeroes_rows_a_block_at_a_time_to_the_same_file(tmp_path, monkeypatch):
    """ZeroedRows, written in blocks smaller than the array, gives the same decoded file the
    whole array copied, zeroed and saved gives."""
    from worker.engine.data import arrays as arrays_module
    from worker.engine.data.arrays import DatasetArrays
    from worker.engine.data.loader import ZeroedRows

    rng = np.random.default_rng(4)
    arrays = DatasetArrays(x_train=rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8),
                           y_train=rng.integers(0, 2, 300), x_test=rng.integers(
                               0, 256, (20, 4, 4, 3), dtype=np.uint8),
                           y_test=rng.integers(0, 2, 20), ids_train=[f"i{n}" for n in range(300)],
                           classes=["a", "b"], subjects_train=["s"] * 300)
    source, whole, blocks = (tmp_path / name for name in ("source", "whole", "blocks"))
    arrays.save(source)
    erased = [0, 47, 48, 299, 150]

    expected = DatasetArrays.load(source)
    expected.x_train = expected.x_train.copy()
    expected.x_train[sorted(erased)] = 0
    for row in erased:
        expected.subjects_train[row] = None
    expected.save(whole)

    blocks_of = arrays_module.row_blocks
    sliced = []

    def small_blocks(array, block_bytes=0):
        sliced.append(len(array))
        return blocks_of(array, 7 * 48)  # 7 rows of 48 bytes a block

    monkeypatch.setattr(arrays_module, "row_blocks", small_blocks)
    opened = DatasetArrays.open(source)
    opened.x_train = ZeroedRows(opened.x_train, erased)
    opened.ids_train, opened.subjects_train = list(opened.ids_train), [
        None if row in erased else s for row, s in enumerate(opened.subjects_train)]
    opened.save(blocks)
    assert 300 in sliced  # x_train went through in blocks
    assert blocks.read_bytes() == whole.read_bytes()


@pytest.fixture
def one_thread():
    from worker.bench.runner import threads

    with threads(1):  # tiny models: one thread is faster on shared cores
        yield


@pytest.mark.slow
def test_every_method_unlearns_identically_from_rows_read_on_demand(tmp_path, one_thread):
    """Each method (one epoch where it has epochs), on both kinds of request, gives
    bit-identical weights whether the job's inputs are in memory or LazyInputs reading rows
    from the decoded file: the out-of-core path changes where rows come from, never what a
    method computes."""
    import copy

    import torch

    from worker.engine.architectures import build_model
    from worker.engine.data.arrays import DatasetArrays
    from worker.engine.data.loader import LazyInputs
    from worker.engine.methods import METHODS, UnlearningData, UnlearningTask
    from worker.engine.training import TrainingRecipe, train

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(4, 10)).astype(np.float32)
    y, y_test = rng.integers(0, 4, 400), rng.integers(0, 4, 100)
    path = tmp_path / "arrays.safetensors"
    DatasetArrays(x_train=centres[y] + rng.normal(size=(400, 10)).astype(np.float32),
                  y_train=y, x_test=centres[y_test] + rng.normal(size=(100, 10))
                  .astype(np.float32), y_test=y_test, ids_train=[str(i) for i in range(400)],
                  classes=list("abcd")).save(path)
    in_memory, on_disk = DatasetArrays.load(path), DatasetArrays.open(path)
    inputs = {False: (in_memory.inputs(in_memory.x_train), in_memory.inputs(in_memory.x_test)),
              True: (LazyInputs(on_disk, on_disk.x_train), LazyInputs(on_disk, on_disk.x_test))}
    labels = torch.from_numpy(in_memory.y_train)

    def fresh():
        return build_model("mlp", {"num_classes": 4, "input_shape": [10], "hidden": [16]})

    recipe = TrainingRecipe(epochs=4, lr=0.05, batch_size=64)
    torch.manual_seed(0)
    base = fresh()
    train(base, inputs[False][0], labels, recipe, torch.device("cpu"))

    def data(lazy: bool, whole_class: bool) -> UnlearningData:
        forget = (torch.nonzero(labels == 2).flatten() if whole_class
                  else torch.arange(0, 400, 10))
        excluded = torch.zeros(400, dtype=torch.bool)
        excluded[forget] = True
        x_train, x_test = inputs[lazy]
        return UnlearningData(x_train=x_train, y_train=labels, x_test=x_test,
                              y_test=torch.from_numpy(in_memory.y_test), forget_idx=forget,
                              retain_idx=torch.nonzero(~excluded).flatten(), num_classes=4,
                              forget_classes=[2] if whole_class else None)

    for name in METHODS.names():
        for whole_class in (False, True):
            weights = []
            for lazy in (False, True):
                method = METHODS.get(name)()
                task = UnlearningTask(model=copy.deepcopy(base), build_fresh=fresh,
                                      data=data(lazy, whole_class), recipe=recipe,
                                      device=torch.device("cpu"))
                quick = {"epochs": 1} if "epochs" in method.Params.model_fields else {}
                weights.append(method.run(task, method.Params(**quick)).model.state_dict())
            assert weights[0].keys() == weights[1].keys()
            assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), \
                (name, whole_class)
