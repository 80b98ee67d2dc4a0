"""The ``lethe`` command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

cli = typer.Typer(help="Lethe: machine unlearning as a service.", no_args_is_help=True,
                  add_completion=False)
db_cli = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
apikey_cli = typer.Typer(help="API keys.", no_args_is_help=True)
data_cli = typer.Typer(help="Dataset files.", no_args_is_help=True)
receipt_cli = typer.Typer(help="Deletion receipts.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(apikey_cli, name="apikey")
cli.add_typer(data_cli, name="data")
cli.add_typer(receipt_cli, name="receipt")


@cli.command()
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API (and, without a broker configured, an in-process worker)."""
    import uvicorn

    from app.core import migrate
    from app.core.config import get_settings
    from app.main import create_app

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    if not settings.database_url:
        migrate.upgrade()
    worker = "in-process worker" if settings.embedded_worker else f"broker {settings.broker_url}"
    typer.echo(f"Lethe on http://{host}:{port} (database {settings.resolved_database_url}, "
               f"{worker}, blobs in {settings.blob_root})")
    uvicorn.run(create_app(), host=host, port=port, log_level="info")


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Jobs run at once (one process each).")] = 1,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker for the unlearning queue."""
    from app.core.config import get_settings
    from worker.celery_app import celery_app

    settings = get_settings()
    if settings.embedded_worker:
        raise typer.BadParameter("set LETHE_BROKER_URL (e.g. redis://127.0.0.1:6379/0)")
    celery_app.worker_main(["worker", "--queues", settings.queue_name, "--concurrency",
                            str(concurrency), "--loglevel", loglevel, "--pool", "prefork"])


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION."""
    from app.core import migrate

    migrate.upgrade(revision=revision)
    typer.echo(f"database at {revision}")


@db_cli.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()] = "-1") -> None:
    """Revert migrations down to REVISION."""
    from app.core import migrate

    migrate.downgrade(revision=revision)
    typer.echo(f"database at {revision}")


@apikey_cli.command("create")
def apikey_create(
    name: str,
    tenant: Annotated[str | None, typer.Option(help="Add the key to this tenant id.")] = None,
) -> None:
    """Create an API key (and a tenant named NAME); the token is the last line printed."""
    from app.core import migrate
    from app.core.config import get_settings
    from app.core.db import session_scope
    from app.tenants.service import create_api_key

    settings = get_settings()
    if not settings.database_url:
        settings.home.mkdir(parents=True, exist_ok=True)
        migrate.upgrade()
    with session_scope() as db:
        try:
            key, token = create_api_key(db, name, tenant)
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from None
        typer.echo(f"key {key.id} for tenant {key.tenant_id}")
    typer.echo(token)


@cli.command()
def train(
    dataset: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Upload-format file.")],
    architecture: Annotated[str, typer.Option(help="A name from GET /v1/architectures.")],
    out: Annotated[Path, typer.Option(help="Where to write the .safetensors weights.")],
    architecture_config: Annotated[str | None, typer.Option(help="JSON object.")] = None,
    epochs: int | None = None,
    seed: int = 0,
    training_config: Annotated[str | None, typer.Option(help="JSON training recipe.")] = None,
) -> None:
    """Train a catalogue architecture on a dataset file and save weights the service accepts."""
    from worker.engine.training import train_from_file

    recipe = json.loads(training_config) if training_config else {}
    summary = train_from_file(
        dataset, architecture, json.loads(architecture_config) if architecture_config else None,
        epochs=epochs, seed=seed, out_path=out, recipe=recipe)
    typer.echo(json.dumps(summary, indent=2))


@cli.command()
def bench(
    preset: Annotated[str, typer.Option(help="smoke, cpu or gpu.")] = "smoke",
    out: Annotated[Path, typer.Option(help="Directory for the results.")] = Path("bench-out"),
    methods: Annotated[str | None, typer.Option(help="Comma list; default all.")] = None,
    scenarios: Annotated[str | None, typer.Option(help="Comma list of random-10, class.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma list; default the preset's.")] = None,
    dataset: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="An upload-format file instead of the preset's.")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="Original models and decoded data; default $LETHE_HOME/bench-cache or "
             "~/.cache/lethe/bench.")] = None,
    tune: Annotated[str | None, typer.Option(
        help="Sweep this method's --grid on a validation split instead.")] = None,
    grid: Annotated[str | None, typer.Option(
        help='JSON object of value lists, e.g. \'{"lr": [0.001, 0.01]}\'; include the '
             "current defaults' values to compare every setting with them, seed by seed.")
    ] = None,
    validation: Annotated[str, typer.Option(
        help="With --tune: 'carve' takes 10% of the training subset for validation; 'unused' "
             "takes as many rows as the test subset from the training rows the preset's "
             "subset leaves out.")] = "carve",
) -> None:
    """Benchmark unlearning methods against retraining (or tune one with --tune)."""
    from worker.bench import BenchConfigError, parse_csv
    from worker.bench.runner import run_bench
    from worker.bench.tune import run_tune

    if (tune is None) != (grid is None):
        raise typer.BadParameter("--tune and --grid go together")
    if validation != "carve" and tune is None:
        raise typer.BadParameter("--validation applies to --tune sweeps only")
    try:
        common = {"scenarios": parse_csv(scenarios), "seeds": parse_csv(seeds, int),
                  "dataset": dataset, "cache_dir": cache}
        output = (run_tune(preset, tune, json.loads(grid), out, validation=validation,
                           **common) if tune else
                  run_bench(preset, out, methods=parse_csv(methods), **common))
    except (BenchConfigError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    for kind, path in output.paths.items():
        typer.echo(f"{kind}: {path}")


@data_cli.command("export-digits")
def export_digits(out: Annotated[Path, typer.Option(help="The .npz file to write.")]) -> None:
    """Write scikit-learn's bundled handwritten digits as an upload-ready .npz."""
    from worker.engine.data.formats import export_digits as export

    export(out)
    typer.echo(f"wrote {out}")


@receipt_cli.command("verify")
def receipt_verify(
    receipt: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                            help="A receipt saved from .../receipt.")],
    public_key: Annotated[Path, typer.Option(exists=True, dir_okay=False,
                                             help="PEM, or the JSON of GET /v1/keys/receipt.")],
    sample_ids: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Also check the forgotten ids (one per line).")] = None,
) -> None:
    """Check a receipt's (or a signed audit head's) signature offline; exit status 0 only if it
    is valid."""
    from app.deletion_requests.receipts import ids_digest, load_public_key, verify_receipt

    document = json.loads(receipt.read_text())
    if not verify_receipt(document, load_public_key(public_key.read_text())):
        typer.echo("INVALID: the signature does not match this receipt and key")
        raise typer.Exit(1)
    if sample_ids is not None:
        ids = [line.strip() for line in sample_ids.read_text().splitlines() if line.strip()]
        if ids_digest(ids) != document["receipt"]["forgotten_samples"]["sha256"]:
            typer.echo("INVALID: the sample ids do not hash to the receipt's digest")
            raise typer.Exit(1)
    body = document["receipt"]
    if "request_id" not in body:  # a signed audit head (GET /v1/audit/head)
        head = body["audit_head"]
        typer.echo(f"valid: audit head seq {head['seq']} hash {head['hash']} at {body['at']}, "
                   f"signed by key {document['key_id']}")
        return
    typer.echo(f"valid: request {body['request_id']} forgot "
               f"{body['forgotten_samples']['count']} samples of model {body['model_id']} "
               f"(version {body['version_before']['version']} -> "
               f"{body['version_after']['version']}), signed by key {document['key_id']}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli()


if __name__ == "__main__":
    main()
