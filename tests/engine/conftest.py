"""Fixtures for the engine tests (builders live in engine_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.formats import export_digits, load_dataset_file


@pytest.fixture(scope="session")
def digits_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    export_digits(path)
    return path


@pytest.fixture(scope="session")
def digits(digits_path: Path) -> DatasetArrays:
    return load_dataset_file(digits_path, digits_path.name)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train fastest on one thread, and two tests' thread pools never fight."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
