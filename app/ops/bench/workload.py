"""What the benchmark asks the service to do: a dataset, models on it, deletion requests.

The dataset is scikit-learn's digits (``lethe data export-digits``) with its training images
repeated, lightly noised, up to the row count asked for: every deletion request names a sample
no request named before, so a burst of thousands of requests on one model needs thousands of
rows, while the model (a small MLP from ``lethe train``) keeps every job short. Jobs use a
cheap method (``finetune``, one epoch), no fallback chain and an unenforced gate, so every
job publishes a version whatever the tiny model's figures: the benchmark times the service,
not a method's quality.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from app.ops.bench.load import Endpoint
from app.ops.bench.stack import run_lethe

DELETION_BODY = {"method": "finetune", "params": {"epochs": 1}, "fallback": [],
                 "gate": {"enforce": False}, "reason": "lethe bench service"}
FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Files:
    dataset: Path
    weights: Path
    train_rows: int


def make_files(work: Path, env: dict[str, str], train_rows: int) -> Files:
    """The dataset file and trained weights, made once per run and shared by the stacks."""
    digits = work / "digits.npz"
    run_lethe(env, work, "data", "export-digits", "--out", str(digits))
    dataset = work / "bench-digits.npz"
    _write_repeated(digits, dataset, train_rows)
    weights = work / "mlp.safetensors"
    run_lethe(env, work, "train", "--dataset", str(dataset), "--architecture", "mlp",
              "--architecture-config", '{"hidden": [32]}', "--epochs", "2", "--out",
              str(weights), "--json")
    return Files(dataset, weights, train_rows)


def _write_repeated(source: Path, target: Path, train_rows: int, seed: int = 0) -> None:
    with np.load(source) as npz:
        arrays = {key: npz[key] for key in npz.files}
    x, y = arrays["x_train"], arrays["y_train"]
    picks = np.arange(train_rows) % len(x)
    noise = np.random.default_rng(seed).integers(-8, 9, size=(train_rows, *x.shape[1:]))
    arrays["x_train"] = np.clip(x[picks].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    arrays["y_train"] = y[picks]
    with target.open("wb") as out:
        np.savez_compressed(out, **arrays)


def api_client(endpoint: Endpoint, timeout: float = 120.0) -> httpx.Client:
    return httpx.Client(base_url=endpoint.url, timeout=timeout,
                        headers={"Authorization": f"Bearer {endpoint.token}"})


def checked(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url.path} answered "
                           f"{response.status_code}: {response.text[:1000]}")
    return response.json()


def register(client: httpx.Client, files: Files, num_models: int) -> list[str]:
    """Upload the dataset once and register ``num_models`` models on it (the same weights)."""
    with files.dataset.open("rb") as data:
        dataset = checked(client.post("/v1/datasets", data={"name": "bench-digits"},
                                      files={"file": ("bench-digits.npz", data)}))
    weights = files.weights.read_bytes()
    return [checked(client.post("/v1/models", data={"name": f"bench-{index}",
                                                    "dataset_id": dataset["id"]},
                                files={"weights": ("w.safetensors", weights)}))["id"]
            for index in range(num_models)]


def submit(client: httpx.Client, model_id: str, sample_id: str) -> dict:
    return checked(client.post(f"/v1/models/{model_id}/deletion-requests",
                               json=DELETION_BODY | {"sample_ids": [sample_id]}))


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = checked(client.get(f"/v1/jobs/{job_id}"))
        if job["status"] in FINAL:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")


def open_jobs(client: httpx.Client) -> int:
    return sum(len(checked(client.get("/v1/jobs", params={"status": status,
                                                           "limit": 100}))["items"])
               for status in ("queued", "running"))


def wait_until_idle(client: httpx.Client, timeout: float = 600.0) -> float:
    """Until no job is queued or running; the seconds it took."""
    started = time.monotonic()
    while open_jobs(client):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"jobs still open after {timeout} s")
        time.sleep(0.25)
    return time.monotonic() - started
