"""The ``lethe`` commands that talk to a running service, through ``lethe_client``.

Conventions, the same for every command:

- what a command acts on is an argument (``lethe forget MODEL``, ``lethe jobs watch JOB``);
  everything else is an option;
- a dataset or a model may be named by its id or by its name (one that no other has);
- ``--url`` and ``--token`` default to ``LETHE_URL`` and ``LETHE_TOKEN``;
- ``--json`` prints the result as JSON (and a failure's RFC 9457 problem, exit status 1);
  without it a command prints a line or two for people, and a command that creates something
  prints the new id alone on its last line (and so does one that shows one resource), so
  ``ID=$(lethe ... | tail -n 1)`` works.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

Url = Annotated[str | None, typer.Option(
    "--url", envvar="LETHE_URL", show_envvar=True,
    help="The service, e.g. http://127.0.0.1:8000 (the default).")]
Token = Annotated[str | None, typer.Option(
    "--token", envvar="LETHE_TOKEN", show_envvar=True,
    help="An API key (`lethe apikey create NAME`).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
Wait = Annotated[bool, typer.Option("--wait", help="Follow the job to its end, with a "
                                    "progress bar on standard error.")]
Timeout = Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")]
Yes = Annotated[bool, typer.Option("--yes", help="Yes, delete it (and erase its blobs).")]

datasets_cli = typer.Typer(help="Datasets on the service.", no_args_is_help=True)
models_cli = typer.Typer(help="Models on the service: registration, tags, aliases.",
                         no_args_is_help=True)
versions_cli = typer.Typer(help="Model versions: listing and checkpoint downloads.",
                           no_args_is_help=True)
jobs_cli = typer.Typer(help="Unlearning jobs.", no_args_is_help=True)
requests_cli = typer.Typer(help="Deletion requests.", no_args_is_help=True)
receipts_cli = typer.Typer(help="Signed deletion receipts.", no_args_is_help=True)
audit_cli = typer.Typer(help="The audit trail.", no_args_is_help=True)
webhooks_cli = typer.Typer(help="Webhook subscriptions and their deliveries.",
                           no_args_is_help=True)


def install(cli: typer.Typer) -> None:
    """Add the service commands to the ``lethe`` command."""
    for group, name in ((datasets_cli, "datasets"), (models_cli, "models"),
                        (versions_cli, "versions"), (jobs_cli, "jobs"),
                        (requests_cli, "requests"), (receipts_cli, "receipts"),
                        (audit_cli, "audit"), (webhooks_cli, "webhooks")):
        cli.add_typer(group, name=name)
    cli.command("forget")(forget)


def plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def emit(as_json: bool, value: Any, human: Iterable[str] | str) -> None:
    if as_json:
        typer.echo(json.dumps(plain(value), indent=2, ensure_ascii=False))
        return
    for line in [human] if isinstance(human, str) else human:
        typer.echo(line)


def remote(command: Callable) -> Callable:
    """Run ``command`` with the client's errors turned into a message and exit status 1."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from lethe_client import LetheError, ProblemError

        try:
            return command(*args, **kwargs)
        except LetheError as exc:
            problem = exc.problem if isinstance(exc, ProblemError) else None
            if kwargs.get("as_json"):
                typer.echo(json.dumps(plain(problem) if problem else {"error": str(exc)},
                                      indent=2, ensure_ascii=False))
            else:
                typer.echo(f"error: {exc}", err=True)
                for error in (problem.errors or []) if problem else []:
                    typer.echo(f"  {error.field}: {error.message}", err=True)
            raise typer.Exit(1) from None

    return run


def connect(url: str | None, token: str | None):
    from lethe_client import Client

    return Client(url, token)


def _json_option(name: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc.msg}", param_hint=name) from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=name)
    return value


def _tags(values: list[str] | None, name: str = "--tag") -> dict[str, str | None] | None:
    """``KEY=VALUE`` (or ``KEY`` alone, for filters: any value) into a dict."""
    if not values:
        return None
    tags: dict[str, str | None] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not key:
            raise typer.BadParameter(f"{value!r}: give KEY=VALUE", param_hint=name)
        tags[key] = val if sep else None
    return tags


# Datasets -------------------------------------------------------------------------------------

@datasets_cli.command("upload")
@remote
def datasets_upload(
    file: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False,
        help=".npz, ImageFolder .zip/.tar/.tar.gz, or a .csv/.jsonl/.parquet table.")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name.")] = None,
    label_column: Annotated[str | None, typer.Option(
        help="Tables: the label column (default label).")] = None,
    text_column: Annotated[str | None, typer.Option(
        help="Tables: the text column, for a text dataset.")] = None,
    feature_column: Annotated[list[str] | None, typer.Option(
        help="Tables: a numeric feature column, repeatable (default: every other).")] = None,
    id_column: Annotated[str | None, typer.Option(help="Tables: the sample ids.")] = None,
    subject_column: Annotated[str | None, typer.Option(
        help="Tables: each row's data subject.")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="Tables: train or test per row.")] = None,
    test_fraction: Annotated[float | None, typer.Option(
        help="Tables without a split column: the share held out (default 0.2).")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Upload a dataset file; prints its id last."""
    with connect(url, token) as lethe:
        dataset = lethe.datasets.upload(
            file, name, label_column=label_column, text_column=text_column,
            feature_columns=feature_column, id_column=id_column,
            subject_column=subject_column, split_column=split_column,
            test_fraction=test_fraction)
    emit(as_json, dataset, [
        f"dataset {dataset.name!r}: {dataset.num_train} training and {dataset.num_test} test "
        f"samples, {dataset.num_classes} classes, input {dataset.input_shape}", dataset.id])


@datasets_cli.command("get")
@remote
def datasets_get(dataset: Annotated[str, typer.Argument(help="Id or name.")],
                 url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Show a dataset."""
    with connect(url, token) as lethe:
        found = lethe.datasets.get(dataset)
    emit(as_json, found, [f"dataset {found.name!r}: {found.num_train} training, "
                          f"{found.num_test} test, classes {found.classes}", found.id])


@datasets_cli.command("list")
@remote
def datasets_list(url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """List the tenant's datasets."""
    with connect(url, token) as lethe:
        rows = list(lethe.datasets.list())
    emit(as_json, rows, [f"{d.id}  {d.name}  ({d.num_train} training samples)" for d in rows])


@datasets_cli.command("samples")
@remote
def datasets_samples(
    dataset: Annotated[str, typer.Argument(help="Id or name.")],
    label: Annotated[int | None, typer.Option(help="Only samples of this class.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many.")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Print the sample ids alone, one a line "
                                      "(a file for `lethe forget --ids-file`).")] = False,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """List a dataset's training samples, in row order."""
    with connect(url, token) as lethe:
        rows = list(lethe.datasets.samples(dataset, label=label, limit=limit))
    if ids and not as_json:
        emit(False, None, [s.id for s in rows])
        return
    emit(as_json, rows, [f"{s.id}  label {s.label}" + ("  forgotten" if s.deleted else "")
                         + (f"  subject {s.subject}" if s.subject else "") for s in rows])


@datasets_cli.command("delete")
@remote
def datasets_delete(dataset: Annotated[str, typer.Argument(help="Id or name.")],
                    yes: Yes = False, url: Url = None, token: Token = None,
                    as_json: Json = False) -> None:
    """Delete a dataset and erase its blobs (refused while a model uses it)."""
    if not yes:
        raise typer.BadParameter("deleting erases the data: add --yes", param_hint="--yes")
    with connect(url, token) as lethe:
        dataset_id = lethe.datasets.resolve(dataset)
        lethe.datasets.delete(dataset_id)
    emit(as_json, {"deleted": dataset_id}, f"dataset {dataset_id} deleted, its blobs erased")


# Models ---------------------------------------------------------------------------------------

@models_cli.command("register")
@remote
def models_register(
    weights: Annotated[Path, typer.Argument(
        exists=True, help="The .safetensors weights, or a Hugging Face model folder "
                          "(model.safetensors, config.json, tokenizer files).")],
    dataset: Annotated[str, typer.Option(help="The dataset it was trained on (id or name).")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name.")] = None,
    architecture: Annotated[str | None, typer.Option(
        help="Default: what `lethe train` recorded in the file.")] = None,
    architecture_config: Annotated[str | None, typer.Option(help="JSON object.")] = None,
    training_config: Annotated[str | None, typer.Option(
        help="JSON object: the recipe `retrain` reuses.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Register trained weights as a model (version 1); prints its id last."""
    with connect(url, token) as lethe:
        model = lethe.models.register(
            weights, dataset=dataset, name=name, architecture=architecture,
            architecture_config=_json_option("--architecture-config", architecture_config),
            training_config=_json_option("--training-config", training_config),
            tags=_tags(tag))
    emit(as_json, model, [f"model {model.name!r}: {model.architecture} on dataset "
                          f"{model.dataset_id}, version {model.latest_version}", model.id])


@models_cli.command("get")
@remote
def models_get(model: Annotated[str, typer.Argument(help="Id or name.")],
               url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Show a model."""
    with connect(url, token) as lethe:
        found = lethe.models.get(model)
    emit(as_json, found, [f"model {found.name!r}: {found.architecture}, latest version "
                          f"{found.latest_version}", found.id])


@models_cli.command("list")
@remote
def models_list(
    name: Annotated[str | None, typer.Option(help="Only models of this name.")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE (or KEY: any value), repeatable; all must match.")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """List the tenant's models."""
    with connect(url, token) as lethe:
        rows = list(lethe.models.list(name=name, tags=_tags(tag)))
    emit(as_json, rows, [f"{m.id}  {m.name}  v{m.latest_version}"
                         + "".join(f"  {a}@{v}" for a, v in m.aliases.items()) for m in rows])


@models_cli.command("alias")
@remote
def models_alias(
    model: Annotated[str, typer.Argument(help="Id or name.")],
    alias: Annotated[str, typer.Argument(help="A name such as production.")],
    version: Annotated[int, typer.Argument(help="The version it is to name.")],
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Point ALIAS at VERSION (it follows on when that version is withdrawn)."""
    with connect(url, token) as lethe:
        row = lethe.models.set_alias(model, alias, version)
    emit(as_json, row, f"{row.alias} -> version {row.version}")


@models_cli.command("unalias")
@remote
def models_unalias(model: Annotated[str, typer.Argument(help="Id or name.")],
                   alias: Annotated[str, typer.Argument()],
                   url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Delete an alias."""
    with connect(url, token) as lethe:
        lethe.models.delete_alias(model, alias)
    emit(as_json, {"deleted": alias}, f"{alias} deleted")


@models_cli.command("aliases")
@remote
def models_aliases(model: Annotated[str, typer.Argument(help="Id or name.")],
                   url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """List a model's aliases (latest included)."""
    with connect(url, token) as lethe:
        rows = lethe.models.aliases(model)
    emit(as_json, rows, [f"{a.alias} -> version {a.version}" for a in rows])


@models_cli.command("tag")
@remote
def models_tag(
    model: Annotated[str, typer.Argument(help="Id or name.")],
    tags: Annotated[list[str], typer.Argument(help="KEY=VALUE, one or more.")],
    version: Annotated[int | None, typer.Option(help="Tag this version, not the model.")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Set tags on a model (or, with --version, on one of its versions)."""
    pairs = _tags(tags, "TAGS") or {}
    if any(value is None for value in pairs.values()):
        raise typer.BadParameter("give KEY=VALUE", param_hint="TAGS")
    with connect(url, token) as lethe:
        for key, value in pairs.items():
            result = (lethe.versions.set_tag(model, version, key, value) if version else
                      lethe.models.set_tag(model, key, value))
    emit(as_json, result, ", ".join(f"{k}={v}" for k, v in result.tags.items()))


@models_cli.command("untag")
@remote
def models_untag(
    model: Annotated[str, typer.Argument(help="Id or name.")],
    key: Annotated[str, typer.Argument()],
    version: Annotated[int | None, typer.Option(help="Of this version, not the model.")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Delete a tag from a model (or, with --version, from one of its versions)."""
    with connect(url, token) as lethe:
        if version:
            lethe.versions.delete_tag(model, version, key)
        else:
            lethe.models.delete_tag(model, key)
    emit(as_json, {"deleted": key}, f"{key} deleted")


@models_cli.command("delete")
@remote
def models_delete(model: Annotated[str, typer.Argument(help="Id or name.")],
                  yes: Yes = False, url: Url = None, token: Token = None,
                  as_json: Json = False) -> None:
    """Delete a model (versions, requests, jobs) and erase its blobs."""
    if not yes:
        raise typer.BadParameter("deleting erases every version: add --yes",
                                 param_hint="--yes")
    with connect(url, token) as lethe:
        model_id = lethe.models.resolve(model)
        lethe.models.delete(model_id)
    emit(as_json, {"deleted": model_id}, f"model {model_id} deleted, its blobs erased")


# Versions -------------------------------------------------------------------------------------

@versions_cli.command("list")
@remote
def versions_list(model: Annotated[str, typer.Argument(help="Id or name.")],
                  url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """List a model's versions."""
    with connect(url, token) as lethe:
        rows = list(lethe.versions.list(model))
    emit(as_json, rows, [f"v{v.version}  {v.sha256[:12]}  forgot {v.forgotten_samples}"
                         + ("  withdrawn" if v.withdrawn_at else "") for v in rows])


@versions_cli.command("forgotten")
@remote
def versions_forgotten(model: Annotated[str, typer.Argument(help="Id or name.")],
                       version: Annotated[int, typer.Argument()],
                       url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """List the ids of the samples the job that made VERSION forgot, one a line."""
    with connect(url, token) as lethe:
        ids = list(lethe.versions.forgotten(model, version))
    emit(as_json, ids, ids)


@versions_cli.command("download")
@remote
def versions_download(
    model: Annotated[str, typer.Argument(help="Id or name.")],
    version: Annotated[str, typer.Argument(help="A version number or an alias (`latest`: the "
                                           "newest).")] = "latest",
    out: Annotated[Path | None, typer.Option(
        help="Where to write it; default <model id>-v<N>.safetensors.")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Download a checkpoint (resuming a partial one), its sha256 checked against the ETag."""
    with connect(url, token) as lethe:
        found = lethe.versions.get(model, version)
        path = lethe.versions.download(model, version, out)
    emit(as_json, {"path": str(path), "version": found.version, "sha256": found.sha256},
         [f"version {found.version} ({found.size_bytes} bytes, sha256 {found.sha256}) "
          "matches its ETag", str(path)])


# Deletion requests and jobs -------------------------------------------------------------------

def _read_ids(path: Path) -> list[str]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _classes(values: list[str] | None) -> list[int] | None:
    if not values:
        return None
    try:
        return [int(c) for value in values for c in value.split(",") if c.strip()]
    except ValueError:
        raise typer.BadParameter("class labels are integers", param_hint="--classes") from None


@remote
def forget(
    model: Annotated[str, typer.Argument(help="Id or name.")],
    ids_file: Annotated[Path | None, typer.Option(
        help="Sample ids to forget, one a line (- for standard input).")] = None,
    classes: Annotated[list[str] | None, typer.Option(
        help="Whole classes to forget, by label: --classes 3 or --classes 3,5.")] = None,
    subject: Annotated[str | None, typer.Option(
        help="Who asked; alone, every sample of this data subject.")] = None,
    method: Annotated[str | None, typer.Option(
        help="A name from GET /v1/methods; default: the service's for the kind of request "
             "(samples or classes).")] = None,
    params: Annotated[str | None, typer.Option(help="The method's parameters, JSON.")] = None,
    fallback: Annotated[list[str] | None, typer.Option(
        help="A method tried if the one before fails the acceptance gate; repeatable.")] = None,
    no_fallback: Annotated[bool, typer.Option(
        "--no-fallback", help="Try no other method when this one fails the gate.")] = False,
    gate: Annotated[str | None, typer.Option(help="Gate threshold overrides, JSON.")] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    wait: Wait = False, timeout: Timeout = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Ask MODEL to forget samples, whole classes or a data subject's samples.

    Give --ids-file, --classes or --subject; prints the deletion request's id last. With
    --wait, follows it to the end (exit status 1 if it fails, with the service's problem)."""
    if (ids_file is not None) + bool(classes) > 1:
        raise typer.BadParameter("give --ids-file or --classes, not both")
    if ids_file is None and not classes and subject is None:
        raise typer.BadParameter("give --ids-file, --classes or --subject")
    if no_fallback and fallback:
        raise typer.BadParameter("--fallback and --no-fallback contradict each other")
    with connect(url, token) as lethe:
        handle = lethe.forget(
            model, sample_ids=_read_ids(ids_file) if ids_file is not None else None,
            classes=_classes(classes), subject=subject, method=method,
            params=_json_option("--params", params),
            fallback=[] if no_fallback else (fallback or None),
            gate=_json_option("--gate", gate), reason=reason)
        lines = [f"deletion request {handle.id}: {handle.request.num_samples} samples, "
                 f"{handle.status} as job {handle.job_id}"]
        if wait:
            done = handle.wait(timeout=timeout, progress=None if not as_json else False)
            lines = [f"deletion request {done.id} completed: model version "
                     f"{done.version_before} -> {done.version_after}"
                     + (_outcome(done.job) if done.job else "")]
    emit(as_json, handle.request, [*lines, handle.id])


def _figures(metrics: dict[str, Any]) -> str:
    shown = [f"{label} {metrics[key]:.3f}" for key, label in
             (("forget_accuracy", "forget"), ("retain_accuracy", "retain"),
              ("test_accuracy", "test")) if isinstance(metrics.get(key), int | float)]
    return ", ".join(shown)


def _outcome(job) -> str:
    metrics = job.metrics or {}
    figures = _figures(metrics)
    return f" by {metrics.get('method', job.method)}" + (f" (accuracy: {figures})"
                                                         if figures else "")


@requests_cli.command("get")
@remote
def requests_get(request: Annotated[str, typer.Argument(help="A deletion request id.")],
                 url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Show a deletion request."""
    with connect(url, token) as lethe:
        found = lethe.deletion_requests.get(request)
    emit(as_json, found, [f"deletion request {found.status}: {found.num_samples} samples of "
                          f"model {found.model_id}, deadline {found.deadline:%Y-%m-%d}, job "
                          f"{found.job_id}", found.id])


@requests_cli.command("list")
@remote
def requests_list(
    model: Annotated[str | None, typer.Option(help="Only this model's (id or name).")] = None,
    status: Annotated[str | None, typer.Option()] = None,
    subject: Annotated[str | None, typer.Option()] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only open ones past their "
                                          "deadline.")] = False,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """List deletion requests, most urgent deadline first."""
    with connect(url, token) as lethe:
        rows = list(lethe.deletion_requests.list(model=model, status=status, subject=subject,
                                                 overdue=overdue))
    emit(as_json, rows, [f"{r.id}  {r.status}  deadline {r.deadline:%Y-%m-%d}"
                         + ("  OVERDUE" if r.overdue else "") for r in rows])


@requests_cli.command("wait")
@remote
def requests_wait(request: Annotated[str, typer.Argument(help="A deletion request id.")],
                  timeout: Timeout = None, url: Url = None, token: Token = None,
                  as_json: Json = False) -> None:
    """Follow a deletion request to its end (exit status 1 if it fails)."""
    with connect(url, token) as lethe:
        done = lethe.deletion_requests.handle(request).wait(timeout=timeout,
                                                            progress=not as_json and None)
    emit(as_json, done, f"{done.id} completed: version {done.version_before} -> "
                        f"{done.version_after}")


@jobs_cli.command("watch")
@remote
def jobs_watch(job: Annotated[str, typer.Argument(help="A job id.")], timeout: Timeout = None,
               url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Follow a job with a progress bar (exit status 1 if it fails or is cancelled)."""
    with connect(url, token) as lethe:
        done = lethe.jobs.wait(job, timeout=timeout, progress=not as_json and None)
    emit(as_json, done, f"{done.id} succeeded: version {done.result_version}{_outcome(done)}")


@jobs_cli.command("get")
@remote
def jobs_get(job: Annotated[str, typer.Argument(help="A job id.")], url: Url = None,
             token: Token = None, as_json: Json = False) -> None:
    """Show a job."""
    with connect(url, token) as lethe:
        found = lethe.jobs.get(job)
    emit(as_json, found, [f"job {found.status} {found.progress:.0%}"
                          + (f" ({found.phase})" if found.phase else ""), found.id])


@jobs_cli.command("list")
@remote
def jobs_list(
    model: Annotated[str | None, typer.Option(help="Only this model's (id or name).")] = None,
    status: Annotated[str | None, typer.Option()] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """List jobs."""
    with connect(url, token) as lethe:
        rows = list(lethe.jobs.list(model=model, status=status))
    emit(as_json, rows, [f"{j.id}  {j.status}  {j.method}  model {j.model_id}" for j in rows])


@jobs_cli.command("cancel")
@remote
def jobs_cancel(job: Annotated[str, typer.Argument(help="A job id.")], url: Url = None,
                token: Token = None, as_json: Json = False) -> None:
    """Cancel a job (a running one stops at its next step)."""
    with connect(url, token) as lethe:
        found = lethe.jobs.cancel(job)
    emit(as_json, found, f"{found.id} {found.status} (cancel requested)")


# Receipts and audit ---------------------------------------------------------------------------

@receipts_cli.command("get")
@remote
def receipts_get(
    request: Annotated[str, typer.Argument(help="A completed deletion request's id.")],
    out: Annotated[Path | None, typer.Option(help="Write it here (default: print it).")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Fetch a completed request's signed receipt (check it with `lethe receipts verify`)."""
    with connect(url, token) as lethe:
        receipt = lethe.receipts.get(request)
    text = json.dumps(plain(receipt), indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text + "\n")
    body = receipt.receipt
    emit(as_json, {"path": str(out), "receipt": plain(receipt)},
         f"receipt for {body['request_id']}: {body['forgotten_samples']['count']} samples "
         f"forgotten, signed by key {receipt.key_id}; written to {out}")


@receipts_cli.command("key")
@remote
def receipts_key(
    out: Annotated[Path | None, typer.Option(help="Write it here (default: print it).")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Fetch the public key that verifies receipts and signed audit heads."""
    with connect(url, token) as lethe:
        key = lethe.receipts.public_key()
    text = json.dumps(plain(key), indent=2)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text + "\n")
    emit(as_json, {"path": str(out), "key_id": key.key_id},
         f"key {key.key_id} written to {out}")


@audit_cli.command("verify")
@remote
def audit_verify(
    anchor: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="A receipt or signed head kept earlier: also check that the trail up to it was "
             "not rewritten since.")] = None,
    full: Annotated[bool, typer.Option(
        "--full", help="Re-hash every event from the first, not only those after the latest "
                       "signed checkpoint (the auditor's check; slower on a long trail).")] = False,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Recompute the audit chain (exit status 1 if it does not hold)."""
    with connect(url, token) as lethe:
        verdict = lethe.audit.verify(json.loads(anchor.read_text()) if anchor else None,
                                     full=full)
    line = (f"valid: {verdict.checked} of your events checked" if verdict.valid else
            f"INVALID: first mismatching event {verdict.first_invalid_seq}"
            + (", and the anchor no longer matches" if verdict.anchor_matches is False else "")
            + (f", the signed checkpoint at event {verdict.checkpoint_mismatch_seq} no longer "
               "matches" if verdict.checkpoint_mismatch_seq is not None else ""))
    if verdict.valid and verdict.anchor_matches:
        line += ", the anchor matches"
    if verdict.valid:
        line += (", every event re-hashed" if verdict.full or not verdict.verified_from_seq
                 else f", re-hashed after the signed checkpoint at event "
                      f"{verdict.verified_from_seq}")
    emit(as_json, verdict, line)
    if not verdict.valid:
        raise typer.Exit(1)


@audit_cli.command("head")
@remote
def audit_head(
    out: Annotated[Path | None, typer.Option(help="Write it here (default: print it).")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Fetch the chain's head, signed: an anchor to keep for `lethe audit verify --anchor`."""
    with connect(url, token) as lethe:
        head = lethe.audit.head()
    text = json.dumps(plain(head), indent=2)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text + "\n")
    emit(as_json, {"path": str(out), "audit_head": head.receipt["audit_head"]},
         f"audit head seq {head.receipt['audit_head']['seq']} written to {out}")


@audit_cli.command("events")
@remote
def audit_events(url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """List the tenant's audit events."""
    with connect(url, token) as lethe:
        rows = list(lethe.audit.events())
    emit(as_json, rows, [f"{e.seq:>6}  {e.at:%Y-%m-%dT%H:%M:%S}  {e.action}  "
                         f"{e.subject_type} {e.subject_id}" for e in rows])


# Webhooks -------------------------------------------------------------------------------------

@webhooks_cli.command("create")
@remote
def webhooks_create(
    url_to: Annotated[str, typer.Argument(metavar="URL", help="Where to POST the events.")],
    event: Annotated[list[str] | None, typer.Option(
        help="An event type (repeatable); default every one (*).")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """Subscribe URL to events; prints the signing secret (shown only now), then the id."""
    with connect(url, token) as lethe:
        hook = lethe.webhooks.create(url_to, event or ["*"], description)
    emit(as_json, hook, [f"webhook for {', '.join(hook.events)} to {hook.url}",
                         f"secret {hook.secret}", hook.id])


@webhooks_cli.command("list")
@remote
def webhooks_list(url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """List the tenant's webhooks."""
    with connect(url, token) as lethe:
        rows = list(lethe.webhooks.list())
    emit(as_json, rows, [f"{h.id}  {h.url}  {','.join(h.events)}" for h in rows])


@webhooks_cli.command("delete")
@remote
def webhooks_delete(webhook: Annotated[str, typer.Argument(help="A webhook id.")],
                    url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Unsubscribe (its deliveries go too)."""
    with connect(url, token) as lethe:
        lethe.webhooks.delete(webhook)
    emit(as_json, {"deleted": webhook}, f"{webhook} deleted")


@webhooks_cli.command("deliveries")
@remote
def webhooks_deliveries(
    webhook: Annotated[str, typer.Argument(help="A webhook id.")],
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed.")] = None,
    url: Url = None, token: Token = None, as_json: Json = False,
) -> None:
    """List a webhook's deliveries, each with its attempts."""
    with connect(url, token) as lethe:
        rows = list(lethe.webhooks.deliveries(webhook, status))
    emit(as_json, rows, [f"{d.id}  {d.event_type}  {d.status}  attempts "
                         + " ".join(str(a.status_code or "-") for a in d.attempt_log)
                         + (f"  ({d.last_error})" if d.last_error else "") for d in rows])


@webhooks_cli.command("resend")
@remote
def webhooks_resend(webhook: Annotated[str, typer.Argument(help="A webhook id.")],
                    delivery: Annotated[str, typer.Argument(help="A delivery id.")],
                    url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Deliver again (the same webhook-id), with a new round of attempts."""
    with connect(url, token) as lethe:
        row = lethe.webhooks.resend(webhook, delivery)
    emit(as_json, row, f"{row.id} {row.status}")
