"""``lethe bench service``: every figure on every stack asked for, in one run."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app.ops.bench import audit_scale, measures
from app.ops.bench.load import SamplePool
from app.ops.bench.report import write_report
from app.ops.bench.stack import EMBEDDED, POSTGRES, STACKS, Stack, clean_environment, running_stack
from app.ops.bench.workload import (
    Files,
    api_client,
    make_files,
    register,
    submit,
    wait_for_job,
)

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


@dataclass
class BenchOptions:
    out: Path = Path("bench-out/service")
    stacks: tuple[str, ...] = STACKS
    duration: float = 10.0  # seconds of each load point
    warmup: float = 1.0  # seconds of load before each point's window, not counted
    settle_s: float = 1.0  # how long a worker must have been idle before a submit trial
    concurrency: tuple[int, ...] = (16, 64)  # poll clients
    deletion_models: tuple[int, ...] = (1, 10)
    deletion_clients: int = 16
    submit_trials: int = 5
    throughput_workers: tuple[int, ...] = (1, 2)
    throughput_models: int = 10  # jobs per throughput point, one per model
    audit_sizes: tuple[int, ...] = (10_000, 100_000, 300_000, 1_000_000)
    train_rows: int = 12_000
    postgres_url: str = DEFAULT_POSTGRES_URL
    redis_url: str = DEFAULT_REDIS_URL
    quick: bool = False
    command: str = "lethe bench service"

    @classmethod
    def quick_options(cls, **given) -> BenchOptions:
        """About a minute or two: short windows, few trials, small chains."""
        return cls(**({"duration": 3.0, "submit_trials": 3, "throughput_models": 4,
                       "audit_sizes": (10_000, 30_000, 100_000), "train_rows": 4_000,
                       "quick": True} | given))

    @classmethod
    def from_cli(cls, out: Path, stacks: str, duration: float | None, quick: bool,
                 audit_sizes: str | None, postgres_url: str, redis_url: str) -> BenchOptions:
        """The options of ``lethe bench service``'s flags (ValueError: a bad one), with the
        command that reproduces them."""
        names = tuple(name.strip() for name in stacks.split(",") if name.strip())
        unknown = set(names) - set(STACKS)
        if not names or unknown:
            raise ValueError(f"--stacks: a comma list of {', '.join(STACKS)}")
        given: dict = {"out": out, "stacks": names, "postgres_url": postgres_url,
                       "redis_url": redis_url}
        command = ["lethe bench service", f"--out {out}", f"--stacks {','.join(names)}"]
        if duration is not None:
            given["duration"] = duration
            command.append(f"--duration {duration:g}")
        if audit_sizes is not None:
            try:
                given["audit_sizes"] = tuple(int(s) for s in audit_sizes.split(",") if s)
            except ValueError:
                raise ValueError("--audit-sizes: a comma list of event counts") from None
            if len(given["audit_sizes"]) < 1 or min(given["audit_sizes"]) < 1:
                raise ValueError("--audit-sizes: a comma list of event counts")
            command.append(f"--audit-sizes {audit_sizes}")
        if quick:
            command.append("--quick")
        given["command"] = " ".join(command)
        return cls.quick_options(**given) if quick else cls(**given)

    @property
    def num_models(self) -> int:
        return max(max(self.deletion_models), self.throughput_models, 1)


@dataclass
class BenchOutput:
    results: dict
    paths: dict[str, Path] = field(default_factory=dict)


Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_service_bench(options: BenchOptions, log: Log = _stderr,
                      files: Files | None = None) -> BenchOutput:
    """Every figure on each stack of ``options``; ``files``: the dataset and weights, when
    made already (for ``options.train_rows`` rows)."""
    started = time.perf_counter()
    results = {"command": options.command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": machine(), "options": _options_record(options), "stacks": {}}
    with tempfile.TemporaryDirectory(prefix="lethe-bench-files-") as work:
        if files is None:
            log(f"making the dataset ({options.train_rows} training rows) and a model")
            files = make_files(Path(work), clean_environment(Path(work)), options.train_rows)
        for name in options.stacks:
            log(f"stack {name}: starting")
            with running_stack(name, options.postgres_url, options.redis_url) as stack:
                results["stacks"][name] = measure_stack(stack, files, options, log)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    output = BenchOutput(results)
    output.paths = write_report(results, options.out)
    return output


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in load] if load else None}


def _options_record(options: BenchOptions) -> dict:
    record = asdict(options)
    record["out"] = str(options.out)
    record.pop("postgres_url")  # where the operator's server is: not a result
    record.pop("redis_url")
    return record


class Phases:
    """Logs each phase as it starts and keeps the seconds each took."""

    def __init__(self, stack: str, log: Log):
        self.stack, self.log, self.seconds = stack, log, {}
        self._name, self._started = None, 0.0

    def start(self, name: str) -> None:
        self.end()
        self.log(f"stack {self.stack}: {name}")
        self._name, self._started = name, time.perf_counter()

    def end(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.perf_counter() - self._started, 1)
            self._name = None


def measure_stack(stack: Stack, files: Files, options: BenchOptions, log: Log) -> dict:
    figures: dict = {"workers": ("in-process (LETHE_LOCAL_WORKERS default)"
                                 if not stack.has_celery else "1 `lethe worker --concurrency 1`")}
    pool = SamplePool([str(row) for row in range(files.train_rows)], keep=500)
    phases = Phases(stack.name, log)
    with api_client(stack.endpoint) as client:
        phases.start("registering models, warm-up job")
        models = register(client, files, options.num_models)
        warm = wait_for_job(client, submit(client, models[0], pool.take(models[0]))["job_id"])
        figures["warm_up_job"] = measures.job_overhead(warm)

        phases.start("job polls")
        figures["polls"] = _polls(stack, warm["id"], options)

        phases.start("submit-to-running")
        trials = [measures.submit_to_running(client, models[i % len(models)],
                                             pool.take(models[i % len(models)]),
                                             options.settle_s)
                  for i in range(options.submit_trials)]
        figures["submit_to_running"] = _submit_summary(trials)
        figures["fixed_overhead"] = _overhead_summary([t["job"] for t in trials])

        phases.start("deletion requests")
        figures["deletions"] = []
        for count in options.deletion_models:
            point = measures.deletions(stack.endpoint, models[:count], pool,
                                       options.deletion_clients, options.duration,
                                       options.warmup)
            point["cancelled_afterwards"] = measures.cancel_open_jobs(client)
            figures["deletions"].append(point)
            measures.wait_until_idle(client)

        if stack.has_celery:
            phases.start("jobs per minute")
            figures["jobs_per_minute"] = []
            for workers in options.throughput_workers:
                stack.set_workers(workers)
                figures["jobs_per_minute"].append(measures.jobs_per_minute(
                    client, models[:options.throughput_models], pool, workers,
                    options.duration))

        phases.start("audit verification")
        figures["audit_verify"] = audit_scale.measure(stack.endpoint, stack.database_url,
                                                      list(options.audit_sizes),
                                                      stack.tenant_id)
        phases.end()
    figures["phase_seconds"] = phases.seconds
    return figures


def _polls(stack: Stack, job_id: str, options: BenchOptions) -> dict:
    service = {c: measures.polls(stack.endpoint, job_id, c, options.duration, options.warmup)
               for c in options.concurrency}
    floor_endpoint = stack.start_floor()
    try:
        floor = {c: measures.polls(floor_endpoint, job_id, c, options.duration, options.warmup)
                 for c in options.concurrency}
    finally:
        stack.stop_floor()
    return {"points": [{"service": service[c], "floor": floor[c],
                        "ratio_to_floor": _ratio(service[c]["per_second"],
                                                 floor[c]["per_second"]),
                        "p99_ratio_to_floor": _ratio(service[c]["p99_ms"], floor[c]["p99_ms"])}
                       for c in options.concurrency]}


def _ratio(value: float, floor: float) -> float | None:
    return round(value / floor, 3) if floor else None


def _submit_summary(trials: list[dict]) -> dict:
    seconds = [t["seconds"] for t in trials]
    return {"trials": [{k: v for k, v in t.items() if k != "job"} for t in trials],
            "median_s": round(statistics.median(seconds), 4), "max_s": max(seconds),
            "server_median_s": round(statistics.median(t["server_seconds"] for t in trials), 4)}


def _overhead_summary(jobs: list[dict]) -> dict:
    rows = [measures.job_overhead(job) for job in jobs]
    return {"jobs": rows,
            "median_overhead_s": round(statistics.median(r["overhead_s"] for r in rows), 4),
            "median_wall_s": round(statistics.median(r["wall_s"] for r in rows), 4),
            "median_method_s": round(statistics.median(r["method_s"] for r in rows), 4),
            "median_gate_s": round(statistics.median(r["gate_s"] for r in rows), 4)}


__all__ = ["EMBEDDED", "POSTGRES", "BenchOptions", "run_service_bench"]
