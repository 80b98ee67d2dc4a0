"""The ``lethe`` command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from app import cli_remote
from app.cli_remote import Json, emit, receipts_cli

cli = typer.Typer(help="Lethe: machine unlearning as a service. Commands that talk to a "
                  "running service read LETHE_URL and LETHE_TOKEN; every command but serve "
                  "and worker takes --json.", no_args_is_help=True, add_completion=False)
db_cli = typer.Typer(help="Database schema migrations (talks to the database directly).",
                     no_args_is_help=True)
apikey_cli = typer.Typer(help="API keys (talks to the database directly).",
                         no_args_is_help=True)
data_cli = typer.Typer(help="Dataset files on this machine.", no_args_is_help=True)
# `lethe receipt verify` was the command's first name; it stays, unlisted.
receipt_cli = typer.Typer(help="Deletion receipts (old name of `lethe receipts`).",
                          no_args_is_help=True, hidden=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(apikey_cli, name="apikey")
cli.add_typer(data_cli, name="data")
cli.add_typer(receipt_cli, name="receipt")


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from lethe_client import __version__ as client_version

    import app

    try:
        server = version("lethe-unlearning")
    except PackageNotFoundError:
        server = app.__version__
    return f"lethe {server} (client {client_version})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(_versions())
        raise typer.Exit()


@cli.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Lethe: machine unlearning as a service."""


@cli.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    processes: Annotated[int, typer.Option(
        min=1, help="API processes sharing the port (uvicorn's workers). More than one needs "
                    "LETHE_BROKER_URL: the in-process worker runs in a single process.")] = 1,
) -> None:
    """Run the API (and, without a broker configured, an in-process worker)."""
    import uvicorn

    from app.core import migrate
    from app.core.config import get_settings

    settings = get_settings()
    if processes > 1 and settings.embedded_worker:
        raise typer.BadParameter("more than one process needs a broker (LETHE_BROKER_URL) "
                                 "and Celery workers", param_hint="--processes")
    settings.home.mkdir(parents=True, exist_ok=True)
    if not settings.database_url:
        migrate.upgrade()
    worker = "in-process worker" if settings.embedded_worker else f"broker {settings.broker_url}"
    typer.echo(f"Lethe on http://{host}:{port} (database {settings.resolved_database_url}, "
               f"{worker}, blobs in {settings.storage_url or settings.blob_root}, "
               f"{processes} process{'es' if processes > 1 else ''})")
    # An import string, so each process builds its own app (and its own database pool).
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=processes,
                log_level="info")


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Jobs run at once (one process each).")] = 1,
    loglevel: str = "INFO",
    queues: Annotated[str, typer.Option(
        help="jobs, webhooks, or both (comma list). A GPU worker whose one process runs a long "
             "job delivers no webhook meanwhile: run a `--queues webhooks` worker too.")
    ] = "jobs,webhooks",
    node: Annotated[str | None, typer.Option(
        help="This worker's Celery node name, NAME@HOST; default lethe-PID@HOSTNAME, distinct "
             "for every worker of a host.")] = None,
) -> None:
    """Run a Celery worker for the unlearning queue (and webhook deliveries)."""
    from app.core.config import get_settings
    from worker.celery_app import celery_app
    from worker.nodes import announced, default_node_name

    settings = get_settings()
    if settings.embedded_worker:
        raise typer.BadParameter("set LETHE_BROKER_URL (e.g. redis://127.0.0.1:6379/0)")
    names = {"jobs": settings.queue_name, "webhooks": settings.resolved_webhook_queue}
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    if not wanted or set(wanted) - set(names):
        raise typer.BadParameter("jobs, webhooks, or both", param_hint="--queues")
    node = node or default_node_name()
    with announced(settings.home, node):  # where `lethe health worker` finds whom to ask
        celery_app.worker_main(["worker", "--queues", ",".join(names[q] for q in wanted),
                                "--concurrency", str(concurrency), "--loglevel", loglevel,
                                "--pool", "prefork", "--hostname", node])


@cli.command()
def health(
    role: Annotated[str, typer.Argument(
        help="api: this machine's API answers GET /readyz with 200 (its database and broker "
             "reachable); worker: this machine's Celery worker answers a ping.")] = "api",
    port: Annotated[int, typer.Option(help="The API's port (role api).")] = 8000,
    node: Annotated[str | None, typer.Option(
        help="The worker's node name (role worker); default the workers `lethe worker` runs "
             "on this host (or in this container), else Celery's own celery@HOSTNAME.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Exit 0 when the local API or worker is healthy, 1 otherwise: a container health check.

    The worker is asked by its own node name, so a replica is judged by its own answer, not by
    any other worker on the broker."""
    if role == "api":
        import httpx

        url = f"http://127.0.0.1:{port}/readyz"
        try:
            response = httpx.get(url, timeout=timeout)
        except httpx.HTTPError as exc:
            typer.echo(f"unhealthy: {url}: {exc}", err=True)
            raise typer.Exit(1) from None
        if response.status_code != 200:
            typer.echo(f"unhealthy: {url} answered {response.status_code} {response.text}",
                       err=True)
            raise typer.Exit(1)
        typer.echo(f"healthy: {url} answered 200")
    elif role == "worker":
        _check_workers(node, timeout)
    else:
        raise typer.BadParameter("api or worker", param_hint="ROLE")


def _check_workers(node: str | None, timeout: float) -> None:
    """Exit 1 unless every asked worker answers a ping (see worker.nodes: whom to ask)."""
    from celery.utils.nodenames import default_nodename

    from app.core.config import get_settings
    from worker.celery_app import celery_app
    from worker.nodes import running_nodes

    settings = get_settings()
    if settings.embedded_worker:
        raise typer.BadParameter("set LETHE_BROKER_URL: there is no Celery worker to ask")
    names = [node] if node else running_nodes(settings.home) or [default_nodename(None)]
    try:
        replies = celery_app.control.ping(destination=names, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a broker that cannot be reached is unhealthy
        typer.echo(f"unhealthy: cannot ask {', '.join(names)}: {exc}", err=True)
        raise typer.Exit(1) from None
    answered = {name for reply in replies for name, answer in reply.items()
                if answer.get("ok") == "pong"}
    silent = [name for name in names if name not in answered]
    if silent:
        typer.echo(f"unhealthy: worker {', '.join(silent)} did not answer within {timeout} s",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: worker {', '.join(names)} answered")


Revision = Annotated[str, typer.Argument(help="An Alembic revision: an id such as 0003, "
                                           "head, base, or relative as -1 / +1.")]


@db_cli.command("upgrade")
def db_upgrade(
    revision: Revision = "head",
    revision_option: Annotated[str | None, typer.Option(
        "--revision", hidden=True, help="Old spelling of REVISION.")] = None,
    as_json: Json = False,
) -> None:
    """Apply migrations up to REVISION (default head)."""
    from app.core import migrate

    revision = revision_option or revision
    migrate.upgrade(revision=revision)
    emit(as_json, {"revision": migrate.current()}, f"database at {migrate.current()}")


@db_cli.command("downgrade")
def db_downgrade(revision: Revision = "-1", as_json: Json = False) -> None:
    """Revert migrations down to REVISION (default -1: the last one)."""
    from app.core import migrate

    migrate.downgrade(revision=revision)
    emit(as_json, {"revision": migrate.current()}, f"database at {migrate.current()}")


@apikey_cli.command("create")
def apikey_create(
    name: str,
    tenant: Annotated[str | None, typer.Option(help="Add the key to this tenant id.")] = None,
    as_json: Json = False,
) -> None:
    """Create an API key (and a tenant named NAME); the token is the last line printed."""
    from app.core.db import session_scope
    from app.tenants.service import create_api_key

    _embedded_database()
    with session_scope() as db:
        try:
            key, token = create_api_key(db, name, tenant)
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from None
        key_id, tenant_id = key.id, key.tenant_id
    emit(as_json, {"key_id": key_id, "tenant_id": tenant_id, "token": token},
         [f"key {key_id} for tenant {tenant_id}", token])


def _embedded_database() -> None:
    from app.core import migrate
    from app.core.config import get_settings

    if not get_settings().database_url:
        get_settings().home.mkdir(parents=True, exist_ok=True)
        migrate.upgrade()


@apikey_cli.command("list")
def apikey_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Json = False,
) -> None:
    """List API keys (every tenant's, or one's), revoked ones included."""
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.tenants.tables import ApiKey

    _embedded_database()
    with session_scope() as db:
        query = select(ApiKey).order_by(ApiKey.tenant_id, ApiKey.id)
        if tenant:
            query = query.where(ApiKey.tenant_id == tenant)
        rows = [{"id": k.id, "name": k.name, "tenant_id": k.tenant_id,
                 "created_at": k.created_at.isoformat(),
                 "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}
                for k in db.scalars(query)]
    emit(as_json, rows, [f"{k['id']}  tenant {k['tenant_id']}  {k['name']}"
                         + ("  REVOKED" if k["revoked_at"] else "") for k in rows])


@apikey_cli.command("revoke")
def apikey_revoke(key: Annotated[str, typer.Argument(help="A key id (key_…).")],
                  as_json: Json = False) -> None:
    """Revoke an API key: its token answers 401 from then on."""
    from app.audit import service as audit
    from app.core.db import session_scope
    from app.tenants.service import revoke_api_key

    _embedded_database()
    with session_scope() as db:
        try:
            row = revoke_api_key(db, key)
        except LookupError as exc:
            raise typer.BadParameter(str(exc), param_hint="KEY") from None
        audit.record(db, "api_key.revoked", "api_key", row.id, tenant_id=row.tenant_id,
                     actor="cli", data={"name": row.name})
        revoked_at = row.revoked_at.isoformat()
    emit(as_json, {"id": key, "revoked_at": revoked_at}, f"{key} revoked at {revoked_at}")


@cli.command()
def train(
    dataset: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Upload-format file.")],
    architecture: Annotated[str, typer.Option(help="A name from GET /v1/architectures.")],
    out: Annotated[Path, typer.Option(help="Where to write the .safetensors weights.")],
    architecture_config: Annotated[str | None, typer.Option(help="JSON object.")] = None,
    epochs: int | None = None,
    seed: int = 0,
    training_config: Annotated[str | None, typer.Option(help="JSON training recipe.")] = None,
    config: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="hf-image-classifier, hf-text-classifier: the "
        "model's config.json (transformers' model_type); --out is then a folder.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="hf-text-classifier: its tokenizer.json; default a "
        "word-level one built from the training texts.")] = None,
    text_column: Annotated[str | None, typer.Option(help="A table's text column.")] = None,
    label_column: Annotated[str, typer.Option(help="A table's label column.")] = "label",
    split_column: Annotated[str | None, typer.Option(
        help="A table's train/test column.")] = None,
    as_json: Json = False,
) -> None:
    """Train a catalogue architecture on a dataset file and save weights the service accepts.

    The architecture and both configs are recorded in the file's metadata, and `lethe models
    register` (POST /v1/models) takes them from there. A Hugging Face classifier is built from
    --config (no download) and written as a folder transformers' from_pretrained reads."""
    from worker.engine.training import train_from_file

    recipe = json.loads(training_config) if training_config else {}
    if architecture.startswith("hf-"):
        from worker.engine.data.tables import TableColumns
        from worker.engine.hf_files import train_hf_from_file

        given = json.loads(architecture_config) if architecture_config else {}
        if config is not None:
            given["hf_config"] = json.loads(config.read_text())
        summary = train_hf_from_file(
            dataset, architecture, given, out_dir=out, epochs=epochs, seed=seed,
            recipe=recipe, tokenizer_path=tokenizer, show_progress=not as_json,
            columns=TableColumns(label=label_column, text=text_column, split=split_column))
        emit(as_json, summary, [
            f"{architecture} trained for {summary['training_config']['epochs']} epochs in "
            f"{summary['duration_s']} s: train accuracy {summary['train_accuracy']:.3f}, test "
            f"accuracy {summary['test_accuracy']:.3f}", f"wrote {out}/"])
        return
    summary = train_from_file(
        dataset, architecture, json.loads(architecture_config) if architecture_config else None,
        epochs=epochs, seed=seed, out_path=out, recipe=recipe, show_progress=not as_json)
    emit(as_json, summary, [
        f"{architecture} trained for {summary['training_config']['epochs']} epochs in "
        f"{summary['duration_s']} s: train accuracy {summary['train_accuracy']:.3f}, test "
        f"accuracy {summary['test_accuracy']:.3f}", f"wrote {out}"])


# `lethe bench` keeps its options for the methods' benchmark; `lethe bench service` is the
# service's own (app/ops/bench).
bench_cli = typer.Typer(help="Benchmark unlearning methods against retraining (or tune one "
                        "with --tune); `lethe bench service`: the service's own benchmark.")
cli.add_typer(bench_cli, name="bench")


@bench_cli.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(
        help="smoke, cpu, gpu, gpu-quick (one seed; about 8 minutes on an H100, an estimate), "
             "or zoo (four pairs).")] = "smoke",
    out: Annotated[Path, typer.Option(help="Directory for the results.")] = Path("bench-out"),
    methods: Annotated[str | None, typer.Option(
        help="Comma list of methods or labelled variants, e.g. 'projected-gradient (paper)'; "
             "default all.")] = None,
    scenarios: Annotated[str | None, typer.Option(help="Comma list of random-10, class.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma list; default the preset's.")] = None,
    dataset: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="An upload-format file instead of the preset's.")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="Original models and decoded data; default $LETHE_HOME/bench-cache or "
             "~/.cache/lethe/bench.")] = None,
    originals: Annotated[Path | None, typer.Option(
        file_okay=False, help="A pinned set of original models, read before the cache; what "
        "is trained is kept there. The zoo's is committed: benchmarks/zoo/originals (training "
        "is deterministic on one machine, not across CPUs).")] = None,
    tune: Annotated[str | None, typer.Option(
        help="Sweep this method's --grid on a validation split instead.")] = None,
    grid: Annotated[str | None, typer.Option(
        help='JSON object of value lists, e.g. \'{"lr": [0.001, 0.01]}\'; include the '
             "current defaults' values to compare every setting with them, seed by seed.")
    ] = None,
    workers: Annotated[int, typer.Option(
        min=1, help="Pairs of a suite run at once, each in its own process.")] = 1,
    architecture: Annotated[str | None, typer.Option(
        help="Run on this architecture instead of the preset's (any from GET "
             "/v1/architectures, e.g. hf-image-classifier, hf-text-classifier).")] = None,
    architecture_config: Annotated[str | None, typer.Option(
        help="JSON object for --architecture, e.g. '{\"hf_config\": {...}}' (the model's "
             "config.json).")] = None,
    config: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="hf-image-classifier, hf-text-classifier: the "
        "model's config.json (its hf_config), as for lethe train.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="hf-text-classifier: its tokenizer.json; default a "
        "word-level one built from the training texts.")] = None,
    text_column: Annotated[str | None, typer.Option(
        help="A table's text column (a text dataset, for hf-text-classifier).")] = None,
    label_column: Annotated[str, typer.Option(help="A table's label column.")] = "label",
    split_column: Annotated[str | None, typer.Option(
        help="A table's train/test column.")] = None,
    training_config: Annotated[str | None, typer.Option(
        help="JSON training recipe fields over the preset's (and the architecture's), e.g. "
             "'{\"lr\": 0.003, \"epochs\": 10}'.")] = None,
    as_json: Json = False,
    validation: Annotated[str, typer.Option(
        help="With --tune: 'carve' takes 10% of the training subset for validation; 'unused' "
             "takes as many rows as the test subset from the training rows the preset's "
             "subset leaves out.")] = "carve",
) -> None:
    """Benchmark unlearning methods against retraining (or tune one with --tune)."""
    if ctx.invoked_subcommand is not None:
        return
    from worker.bench import BenchConfigError, parse_csv
    from worker.bench.runner import run_bench
    from worker.bench.tune import run_tune

    if (tune is None) != (grid is None):
        raise typer.BadParameter("--tune and --grid go together")
    if validation != "carve" and tune is None:
        raise typer.BadParameter("--validation applies to --tune sweeps only")
    if architecture is not None and tune is not None:
        raise typer.BadParameter("--architecture applies to benchmark runs, not --tune")
    from worker.engine.data.tables import TableColumns

    columns = TableColumns(label=label_column, text=text_column, split=split_column)
    if tune is not None and (config or tokenizer or training_config
                             or columns != TableColumns()):
        raise typer.BadParameter("--config, --tokenizer, --training-config and the column "
                                 "options apply to benchmark runs, not --tune")
    try:
        given = json.loads(architecture_config) if architecture_config else None
        if config is not None:
            given = {**(given or {}), "hf_config": json.loads(config.read_text())}
        common = {"scenarios": parse_csv(scenarios), "seeds": parse_csv(seeds, int),
                  "dataset": dataset, "cache_dir": cache, "originals": originals}
        output = (run_tune(preset, tune, json.loads(grid), out, validation=validation,
                           workers=workers, **common) if tune else
                  run_bench(preset, out, methods=parse_csv(methods), workers=workers,
                            architecture=architecture, architecture_config=given,
                            columns=None if columns == TableColumns() else columns,
                            tokenizer=tokenizer,
                            recipe=json.loads(training_config) if training_config else None,
                            **common))
    except (BenchConfigError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    emit(as_json, {kind: str(path) for kind, path in output.paths.items()},
         [f"{kind}: {path}" for kind, path in output.paths.items()])


@bench_cli.command("service")
def bench_service(
    out: Annotated[Path, typer.Option(help="Directory for results.json and results.md.")
                   ] = Path("bench-out/service"),
    stacks: Annotated[str, typer.Option(help="Comma list of embedded, postgres.")
                      ] = "embedded,postgres",
    duration: Annotated[float | None, typer.Option(
        min=0.5, help="Seconds of each load point; default 10 (3 with --quick).")] = None,
    quick: Annotated[bool, typer.Option(
        help="A minute or two: short windows, few trials, small audit chains.")] = False,
    audit_sizes: Annotated[str | None, typer.Option(
        help="Comma list of audit chain lengths to verify at, e.g. 100000,1000000; default "
             "10000,100000,300000,1000000 (10000,30000,100000 with --quick).")] = None,
    postgres_url: Annotated[str, typer.Option(
        envvar="LETHE_BENCH_POSTGRES_URL", help="A PostgreSQL server the postgres stack may "
        "create (and drop) a database of its own on.")
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    redis_url: Annotated[str, typer.Option(
        envvar="LETHE_BENCH_REDIS_URL", help="The postgres stack's broker (its queue is "
        "named for the run alone).")] = "redis://127.0.0.1:6379/14",
    as_json: Json = False,
) -> None:
    """Measure the running service itself: polls, deletion requests, job latency and
    overhead, audit verification, jobs per minute; results in --out."""
    from app.ops.bench.runner import BenchOptions, run_service_bench

    try:
        options = BenchOptions.from_cli(out, stacks, duration, quick, audit_sizes,
                                        postgres_url, redis_url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    output = run_service_bench(options)
    emit(as_json, {kind: str(path) for kind, path in output.paths.items()},
         [f"{kind}: {path}" for kind, path in output.paths.items()])


@bench_cli.command("chains")
def bench_chains(
    results: Annotated[list[Path], typer.Argument(
        help="A benchmark's results.json (e.g. benchmarks/zoo/results.json), or several runs "
             "on the same pairs and seeds, merged (a --tune run's tune.json counts as its "
             "method at the chosen setting).")],
    chain: Annotated[list[str] | None, typer.Option(
        help="SCENARIO=METHOD,METHOD,... (scenario random-10 or class); repeatable. Default: "
             "the service's default chains (LETHE_DEFAULT_CHAIN_SAMPLES for random-10, "
             "LETHE_DEFAULT_CHAIN_CLASSES for class) and retrain alone.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the markdown here.")] = None,
) -> None:
    """Replay fallback chains on a benchmark's per-seed gate verdicts: how often each
    publishes an approximation, in how many seconds, at what gap to retraining."""
    import json

    from app.core.config import get_settings
    from worker.bench.chains import SCENARIOS, chains_markdown, merged

    chains: dict[str, list[list[str]]] = {scenario: [] for scenario in SCENARIOS}
    for entry in chain or []:
        scenario, _, methods = entry.partition("=")
        if scenario not in chains or not methods:
            raise typer.BadParameter(f"{entry!r}: SCENARIO=METHOD,... with a scenario of "
                                     f"{', '.join(SCENARIOS)}")
        chains[scenario].append(methods.split(","))
    if not chain:
        settings = get_settings()
        chains = {"random-10": [settings.default_chain_samples, ["retrain"]],
                  "class": [settings.default_chain_classes, ["retrain"]]}
    try:
        documents = [json.loads(path.read_text()) for path in results]
        text = chains_markdown(documents[0] if len(documents) == 1 else merged(documents),
                               chains)
    except (OSError, ValueError, KeyError) as exc:
        raise typer.BadParameter(f"{', '.join(map(str, results))}: {exc}") from None
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")
        typer.echo(f"wrote {out}")


@data_cli.command("export-digits")
def export_digits(out: Annotated[Path, typer.Option(help="The .npz file to write.")],
                  as_json: Json = False) -> None:
    """Write scikit-learn's bundled handwritten digits as an upload-ready .npz."""
    from worker.engine.data.formats import export_digits as export

    export(out)
    emit(as_json, {"path": str(out)}, f"wrote {out}")


@receipts_cli.command("init-key")
def receipt_init_key(as_json: Json = False) -> None:
    """Make the receipt signing key (LETHE_RECEIPT_KEY_FILE) unless it exists; print its id.

    A deployment runs this once, before the API, so that every replica finds the same key in
    place (docker-compose.yml's migrate service) rather than the first to sign making it."""
    from app.core.config import get_settings
    from app.deletion_requests import receipts

    path = get_settings().resolved_receipt_key_file
    existed = path.exists()
    key = receipts.key_id(receipts.signing_key().public_key())
    emit(as_json, {"key_id": key, "path": str(path), "created": not existed},
         [f"receipt key {'in' if existed else 'created in'} {path}", key])


@receipts_cli.command("verify")
@receipt_cli.command("verify")
def receipt_verify(
    receipt: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                            help="A receipt saved from .../receipt.")],
    public_key: Annotated[Path, typer.Option(exists=True, dir_okay=False,
                                             help="PEM, or the JSON of GET /v1/keys/receipt.")],
    sample_ids: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Also check the forgotten ids (one per line).")] = None,
    as_json: Json = False,
) -> None:
    """Check a receipt's (or a signed audit head's) signature offline.

    With the key of `lethe receipts key`; exit status 0 only if it is valid."""
    from app.deletion_requests.receipts import ids_digest, load_public_key, verify_receipt

    def invalid(why: str) -> None:
        emit(as_json, {"valid": False, "reason": why}, f"INVALID: {why}")
        raise typer.Exit(1)

    document = json.loads(receipt.read_text())
    if not verify_receipt(document, load_public_key(public_key.read_text())):
        invalid("the signature does not match this receipt and key")
    if sample_ids is not None:
        ids = [line.strip() for line in sample_ids.read_text().splitlines() if line.strip()]
        if ids_digest(ids) != document["receipt"]["forgotten_samples"]["sha256"]:
            invalid("the sample ids do not hash to the receipt's digest")
    body = document["receipt"]
    verdict = {"valid": True, "key_id": document["key_id"], "receipt": body}
    if "request_id" not in body:  # a signed audit head (GET /v1/audit/head)
        head = body["audit_head"]
        emit(as_json, verdict, f"valid: audit head seq {head['seq']} hash {head['hash']} at "
                               f"{body['at']}, signed by key {document['key_id']}")
        return
    emit(as_json, verdict, f"valid: request {body['request_id']} forgot "
         f"{body['forgotten_samples']['count']} samples of model {body['model_id']} "
         f"(version {body['version_before']['version']} -> "
         f"{body['version_after']['version']}), signed by key {document['key_id']}")


cli_remote.install(cli)  # the commands that talk to a running service, listed after these


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli()


if __name__ == "__main__":
    main()
