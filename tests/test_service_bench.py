"""`lethe bench service`: the service's own benchmark, run for real on tiny settings."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.ops.bench.audit_scale import at_one_million, linear_fit
from app.ops.bench.runner import BenchOptions, run_service_bench
from app.ops.bench.stack import clean_environment
from app.ops.bench.workload import Files, make_files
from tests.services import POSTGRES_URL, REDIS_URL, require_postgres, require_redis

TRAIN_ROWS = 1500


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    work = tmp_path_factory.mktemp("bench-files")
    return make_files(work, clean_environment(work), TRAIN_ROWS)


def tiny_options(tmp_path, stack: str) -> BenchOptions:
    """Every figure, each at its smallest: sub-second windows, two models, short chains. Four
    deletion clients, not 16: requests on one model take its lock in turn, and on a loaded
    machine 16 of them queued longer than the window, which then counted none. Poll clients
    4 and 16, not 16 and 64: the service and the floor each keep a pool of connections open,
    and beside another test worker's services 64 clients took PostgreSQL past its 100
    connections ("sorry, too many clients already"), which failed requests."""
    return BenchOptions(out=tmp_path / "out", stacks=(stack,), duration=0.5, warmup=0.2,
                        settle_s=0.2, concurrency=(4, 16), deletion_models=(1, 2),
                        deletion_clients=4,
                        submit_trials=2,
                        throughput_models=2, audit_sizes=(2_000, 4_000, 8_000),
                        train_rows=TRAIN_ROWS,
                        postgres_url=POSTGRES_URL, redis_url=REDIS_URL, quick=True,
                        command=f"lethe bench service --stacks {stack} (test)")


def check_figures(figures: dict, celery: bool) -> None:
    for point in figures["polls"]["points"]:
        for side in ("service", "floor"):
            poll = point[side]
            assert poll["per_second"] > 0 and poll["errors"] == 0, poll
            assert poll["p99_ms"] >= poll["p50_ms"] > 0
        assert point["ratio_to_floor"] > 0
    assert [d["models"] for d in figures["deletions"]] == [1, 2]
    for point in figures["deletions"]:
        assert point["per_minute"] > 0 and point["jobs_created"] >= 1, point
        assert set(point["statuses"]) == {"202"}, point
    submit = figures["submit_to_running"]
    assert len(submit["trials"]) == 2 and 0 < submit["median_s"] < 60
    assert all(t["observed_status"] != "queued" for t in submit["trials"])
    for job in figures["fixed_overhead"]["jobs"]:
        assert job["status"] == "succeeded"
        assert job["wall_s"] >= job["method_s"] + job["gate_s"] and job["method_s"] > 0
        assert job["gate_s"] > 0 and job["overhead_s"] >= job["gate_s"]
        assert job["overhead_s"] >= 0 and job["store_and_commit_s"] >= 0
    points = figures["audit_verify"]["points"]
    assert [p["events"] for p in points] == sorted({p["events"] for p in points})
    assert len(points) >= 2 and points[-1]["events"] >= 8_000
    assert all(p["valid"] and p["incremental_valid"] for p in points)
    million = figures["audit_verify"]["at_1m"]
    assert million["how"] == "extrapolated" and math.isfinite(million["seconds"])
    assert math.isfinite(million["incremental_seconds"])
    if celery:
        runs = figures["jobs_per_minute"]
        assert [r["workers"] for r in runs] == [1, 2]
        assert all(r["per_minute"] > 0 and r["succeeded"] + r["failed"] == r["jobs"]
                   and r["jobs"] == 2 * r["rounds"] >= 2 for r in runs)
    else:
        assert "jobs_per_minute" not in figures


def check_report(output, stack: str) -> None:
    results = json.loads(output.paths["json"].read_text())
    assert results["machine"]["cpu_count"] >= 1 and results["date"]
    check_figures(results["stacks"][stack], celery=stack == "postgres")
    text = output.paths["markdown"].read_text()
    for needed in ("Command: `lethe bench service --stacks", "Machine: ", "Date: ",
                   "## Against the goals", "≥ 1,000 polls/s", "< 10 s", "Floor"):
        assert needed in text, needed


@pytest.mark.slow
def test_embedded_stack(tmp_path, files):
    output = run_service_bench(tiny_options(tmp_path, "embedded"), lambda _line: None, files)
    check_report(output, "embedded")
    print(json.loads(output.paths["json"].read_text())["stacks"]["embedded"]["phase_seconds"])


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_postgres_stack(tmp_path, files):
    require_postgres()
    require_redis()
    output = run_service_bench(tiny_options(tmp_path, "postgres"), lambda _line: None, files)
    check_report(output, "postgres")
    print(json.loads(output.paths["json"].read_text())["stacks"]["postgres"]["phase_seconds"])


def test_cli_options(tmp_path):
    options = BenchOptions.from_cli(tmp_path, "postgres", 2.5, True, "10,20", POSTGRES_URL,
                                    REDIS_URL)
    assert options.stacks == ("postgres",) and options.duration == 2.5
    assert options.audit_sizes == (10, 20) and options.quick
    assert options.command == (f"lethe bench service --out {tmp_path} --stacks postgres "
                               "--duration 2.5 --audit-sizes 10,20 --quick")
    default = BenchOptions.from_cli(tmp_path, "embedded,postgres", None, False, None,
                                    POSTGRES_URL, REDIS_URL)
    assert default.duration == 10.0 and not default.quick
    runner = CliRunner()
    for args in (["--stacks", "sqlite"], ["--audit-sizes", "many"], ["--audit-sizes", "0"]):
        result = runner.invoke(cli, ["bench", "service", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2, (args, result.output)
    assert not (tmp_path / "x").exists()
    assert "service" in runner.invoke(cli, ["bench", "--help"]).output


def test_audit_extrapolation():
    slope, intercept = linear_fit([1, 2, 3], [3, 5, 7])
    assert (slope, intercept) == pytest.approx((2, 1))
    points = [{"events": 100_000, "verify_full_s": 1.0, "verify_incremental_s": 0.02},
              {"events": 200_000, "verify_full_s": 2.0, "verify_incremental_s": 0.03}]
    assert at_one_million(points)["seconds"] == pytest.approx(10.0)
    assert at_one_million(points)["incremental_seconds"] == pytest.approx(0.11)
    assert at_one_million(points)["how"] == "extrapolated"
    measured = [*points, {"events": 1_000_000, "verify_full_s": 9.0,
                          "verify_incremental_s": 0.2}]
    assert at_one_million(measured) == {"seconds": 9.0, "incremental_seconds": 0.2,
                                        "how": "measured", "events": 1_000_000}
