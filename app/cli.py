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
cli.add_typer(db_cli, name="db")
cli.add_typer(apikey_cli, name="apikey")
cli.add_typer(data_cli, name="data")


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


@data_cli.command("export-digits")
def export_digits(out: Annotated[Path, typer.Option(help="The .npz file to write.")]) -> None:
    """Write scikit-learn's bundled handwritten digits as an upload-ready .npz."""
    from worker.engine.data.formats import export_digits as export

    export(out)
    typer.echo(f"wrote {out}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli()


if __name__ == "__main__":
    main()
