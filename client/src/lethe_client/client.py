"""The client: one object per service, a namespace per kind of resource.

    from lethe_client import Client

    lethe = Client()                      # LETHE_URL and LETHE_TOKEN, or url= and token=
    dataset = lethe.datasets.upload("digits.npz")
    model = lethe.models.register("mlp.safetensors", dataset=dataset, name="digits-mlp")
    request = lethe.forget(model, classes=[3], method="deepclean")
    request.wait()                        # a progress bar; DeletionFailed on failure
    lethe.versions.download(model, "latest", "v2.safetensors")

Where an id is expected, a name (or the object itself) does too: ``lethe.forget("digits-mlp",
...)`` looks the model up by name, and refuses a name that two models share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from lethe_client._http import RetryPolicy, Transport
from lethe_client._progress import Bar, human_bytes
from lethe_client.errors import (
    Ambiguous,
    ChecksumMismatch,
    ConfigurationError,
    ConnectionFailed,
    DeletionFailed,
    JobFailed,
    NotFound,
    RangeNotSatisfiable,
    UnknownName,
    WaitTimeout,
)
from lethe_client.models import (
    Alias,
    ApiKey,
    ApiKeyCreated,
    Architecture,
    AuditEvent,
    ChainVerdict,
    Dataset,
    DeletionRequest,
    Delivery,
    ForgottenSample,
    Gate,
    Job,
    Method,
    Model,
    PublicKey,
    Sample,
    SignedDocument,
    Version,
    Webhook,
    WebhookCreated,
)

T = TypeVar("T", bound=BaseModel)
DEFAULT_URL = "http://127.0.0.1:8000"
_ID = re.compile(r"[a-z]+_[0-9a-f]{24}")
JOB_DONE = ("succeeded", "failed", "cancelled")
REQUEST_DONE = ("completed", "failed", "rejected")
CHUNK = 1 << 20


def _json_field(value: dict[str, Any] | BaseModel | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True)
    return json.dumps(value)


# The files of a Hugging Face model folder that registration takes, by form field.
HF_FILES = {"config": "config.json", "tokenizer": "tokenizer.json",
            "tokenizer_config": "tokenizer_config.json",
            "preprocessor_config": "preprocessor_config.json"}

class _Resource:
    def __init__(self, client: Client):
        self._client = client
        self._t = client._transport

    def _pages(self, path: str, model: type[T], params: dict[str, Any] | None = None,
               limit: int = 200) -> Iterator[T]:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        cursor = None
        while True:
            page = self._t.json("GET", path, params=params | {"limit": limit}
                                | ({"cursor": cursor} if cursor else {}))
            for item in page["items"]:
                yield model.model_validate(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def _resolve(self, ref: str | BaseModel, prefix: str, kind: str,
                 by_name: Callable[[str], Iterable[BaseModel]]) -> str:
        """An id from an id, an object, or a name that exactly one resource has."""
        if isinstance(ref, BaseModel):
            return ref.id  # type: ignore[attr-defined]
        if _ID.fullmatch(ref) and ref.startswith(prefix + "_"):
            return ref
        matches = [item.id for item in by_name(ref)]  # type: ignore[attr-defined]
        if not matches:
            raise UnknownName(f"no {kind} has the id or name {ref!r}")
        if len(matches) > 1:
            raise Ambiguous(f"{len(matches)} {kind}s are named {ref!r} ({', '.join(matches)}): "
                            "give an id")
        return matches[0]


class Datasets(_Resource):
    def upload(self, path: str | os.PathLike, name: str | None = None, *,
               label_column: str | None = None, text_column: str | None = None,
               feature_columns: Sequence[str] | None = None, id_column: str | None = None,
               subject_column: str | None = None, split_column: str | None = None,
               test_fraction: float | None = None,
               idempotency_key: str | None = None) -> Dataset:
        """Upload a dataset file (.npz, an ImageFolder .zip/.tar/.tar.gz, or a .csv, .jsonl or
        .parquet table whose columns the keyword arguments name); the service decodes it
        before answering."""
        path = Path(path)
        columns = {"label_column": label_column, "text_column": text_column,
                   "feature_columns": ",".join(feature_columns) if feature_columns else None,
                   "id_column": id_column, "subject_column": subject_column,
                   "split_column": split_column, "test_fraction": test_fraction}
        form = {"name": name or path.stem} | {k: str(v) for k, v in columns.items()
                                               if v is not None}
        data = self._t.json(
            "POST", "/v1/datasets", data=form,
            files=lambda: {"file": (path.name, open(path, "rb"))},  # noqa: SIM115
            idempotency_key=idempotency_key)
        return Dataset.model_validate(data)

    def resolve(self, ref: str | Dataset) -> str:
        return self._resolve(ref, "ds", "dataset", lambda name: self.list(name=name))

    def get(self, ref: str | Dataset) -> Dataset:
        return Dataset.model_validate(self._t.json("GET", f"/v1/datasets/{self.resolve(ref)}"))

    def list(self, name: str | None = None) -> Iterator[Dataset]:
        return self._pages("/v1/datasets", Dataset, {"name": name})

    def delete(self, ref: str | Dataset) -> None:
        """Delete the dataset and erase its blobs (refused while a model uses it)."""
        self._t.send("DELETE", f"/v1/datasets/{self.resolve(ref)}")

    def samples(self, ref: str | Dataset, label: int | None = None,
                limit: int | None = None) -> Iterator[Sample]:
        """The dataset's training samples in row order (``limit``: at most that many)."""
        pages = self._pages(f"/v1/datasets/{self.resolve(ref)}/samples", Sample,
                            {"label": label}, limit=min(limit or 1000, 1000))
        for count, sample in enumerate(pages):
            if limit is not None and count >= limit:
                return
            yield sample


class Models(_Resource):
    def register(self, weights: str | os.PathLike, *, dataset: str | Dataset,
                 name: str | None = None, architecture: str | None = None,
                 architecture_config: dict[str, Any] | None = None,
                 training_config: dict[str, Any] | None = None,
                 tags: dict[str, str] | None = None,
                 idempotency_key: str | None = None) -> Model:
        """Register safetensors weights trained on ``dataset``. What ``lethe train`` recorded
        in the file (architecture and both configs) is used for what is not given here.

        ``weights`` may be a Hugging Face model folder (``model.safetensors`` beside
        ``config.json``, and ``tokenizer.json``, ``tokenizer_config.json`` or
        ``preprocessor_config.json`` when there): every file found is uploaded with it."""
        path = Path(weights)
        extra: dict[str, Path] = {}
        if path.is_dir():
            folder, path = path, path / "model.safetensors"
            extra = {field: folder / filename for field, filename in HF_FILES.items()
                     if (folder / filename).is_file()}
            name = name or folder.name
        form = {"name": name or path.stem, "dataset_id": self._client.datasets.resolve(dataset),
                "architecture": architecture,
                "architecture_config": _json_field(architecture_config),
                "training_config": _json_field(training_config), "tags": _json_field(tags)}

        def files() -> dict:
            opened = {"weights": (path.name, open(path, "rb"))}  # noqa: SIM115
            opened |= {field: (file.name, open(file, "rb"))  # noqa: SIM115
                       for field, file in extra.items()}
            return opened

        data = self._t.json(
            "POST", "/v1/models", data={k: v for k, v in form.items() if v is not None},
            files=files, idempotency_key=idempotency_key)
        return Model.model_validate(data)

    def resolve(self, ref: str | Model) -> str:
        return self._resolve(ref, "mdl", "model", lambda name: self.list(name=name))

    def get(self, ref: str | Model) -> Model:
        return Model.model_validate(self._t.json("GET", f"/v1/models/{self.resolve(ref)}"))

    def list(self, name: str | None = None,
             tags: dict[str, str | None] | None = None) -> Iterator[Model]:
        """Models, optionally of one name and carrying every tag in ``tags`` (a value of
        None: the tag with any value)."""
        return self._pages("/v1/models", Model, {"name": name, "tag": _tag_filters(tags)})

    def delete(self, ref: str | Model) -> None:
        """Delete the model (versions, requests, jobs) and erase its blobs; refused (409)
        while one of its jobs is queued or running."""
        self._t.send("DELETE", f"/v1/models/{self.resolve(ref)}")

    def set_tag(self, ref: str | Model, key: str, value: str) -> Model:
        return Model.model_validate(self._t.json(
            "PUT", f"/v1/models/{self.resolve(ref)}/tags/{key}", json={"value": value}))

    def delete_tag(self, ref: str | Model, key: str) -> None:
        self._t.send("DELETE", f"/v1/models/{self.resolve(ref)}/tags/{key}")

    def set_alias(self, ref: str | Model, alias: str, version: int) -> Alias:
        """Point ``alias`` at ``version`` (moved later, with an audit event, if that version
        is withdrawn because a newer one forgot data)."""
        return Alias.model_validate(self._t.json(
            "PUT", f"/v1/models/{self.resolve(ref)}/aliases/{alias}", json={"version": version}))

    def get_alias(self, ref: str | Model, alias: str) -> Alias:
        return Alias.model_validate(self._t.json(
            "GET", f"/v1/models/{self.resolve(ref)}/aliases/{alias}"))

    def aliases(self, ref: str | Model) -> list[Alias]:
        return [Alias.model_validate(a) for a in self._t.json(
            "GET", f"/v1/models/{self.resolve(ref)}/aliases")]

    def delete_alias(self, ref: str | Model, alias: str) -> None:
        self._t.send("DELETE", f"/v1/models/{self.resolve(ref)}/aliases/{alias}")


def _tag_filters(tags: dict[str, str | None] | None) -> list[str] | None:
    if not tags:
        return None
    return [key if value is None else f"{key}:{value}" for key, value in tags.items()]


def _version_ref(ref: int | str | None) -> int | str | None:
    """An int for a version number (``3`` or ``"3"``), else the alias as given."""
    if isinstance(ref, str) and ref.isdigit():
        return int(ref)
    return ref


class Versions(_Resource):
    def list(self, model: str | Model,
             tags: dict[str, str | None] | None = None) -> Iterator[Version]:
        return self._pages(f"/v1/models/{self._client.models.resolve(model)}/versions",
                           Version, {"tag": _tag_filters(tags)})

    def get(self, model: str | Model, ref: int | str = "latest") -> Version:
        """One version, by number or alias (``latest``: the newest)."""
        model_id = self._client.models.resolve(model)
        ref = _version_ref(ref)
        if isinstance(ref, str):
            ref = self._client.models.get_alias(model_id, ref).version
        return Version.model_validate(
            self._t.json("GET", f"/v1/models/{model_id}/versions/{ref}"))

    def forgotten(self, model: str | Model, version: int) -> Iterator[str]:
        """The ids of the samples the job that made ``version`` forgot."""
        model_id = self._client.models.resolve(model)
        for item in self._pages(f"/v1/models/{model_id}/versions/{version}/forgotten-samples",
                                ForgottenSample, limit=1000):
            yield item.id

    def set_tag(self, model: str | Model, version: int, key: str, value: str) -> Version:
        model_id = self._client.models.resolve(model)
        return Version.model_validate(self._t.json(
            "PUT", f"/v1/models/{model_id}/versions/{version}/tags/{key}",
            json={"value": value}))

    def delete_tag(self, model: str | Model, version: int, key: str) -> None:
        model_id = self._client.models.resolve(model)
        self._t.send("DELETE", f"/v1/models/{model_id}/versions/{version}/tags/{key}")

    def download(self, model: str | Model, ref: int | str = "latest",
                 path: str | os.PathLike | None = None, *,
                 progress: bool | None = None) -> Path:
        """Stream a checkpoint to ``path`` (default ``<model id>-v<N>.safetensors``).

        The bytes go to ``<path>.part`` first: an interrupted download (a dropped connection
        here, or an earlier run that died) resumes from where it stopped with a ``Range``
        request, guarded by ``If-Range`` so a changed checkpoint starts over. The finished
        file's sha256 must equal the ETag (and the version's sha256), or it is deleted and
        :class:`ChecksumMismatch` raised. A download by alias follows the alias."""
        model_id = self._client.models.resolve(model)
        ref = _version_ref(ref)
        version = self.get(model_id, ref)
        if isinstance(ref, str):  # the alias's own route: a move in between is followed
            url = f"/v1/models/{model_id}/aliases/{ref}/checkpoint"
        else:
            url = f"/v1/models/{model_id}/versions/{version.version}/checkpoint"
        target = Path(path) if path else Path(f"{model_id}-v{version.version}.safetensors")
        # By number the bytes must be that version's; an alias may have moved since it was
        # looked up, and then the ETag of what it names now is what counts.
        return _download(self._t, url, target, etag=version.sha256, size=version.size_bytes,
                         expected=None if isinstance(ref, str) else version.sha256,
                         bar=Bar(target.name, enabled=self._client._show(progress)))


def _download(t: Transport, url: str, target: Path, *, etag: str, size: int,
              expected: str | None, bar: Bar) -> Path:
    part = target.with_name(target.name + ".part")
    failures = 0
    try:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            headers = {"Accept-Encoding": "identity"}  # byte offsets into the file itself
            if offset:
                headers |= {"Range": f"bytes={offset}-", "If-Range": f'"{etag}"'}
            try:
                with t.stream("GET", url, headers=headers) as response:
                    etag = response.headers.get("etag", "").strip('"') or etag
                    total = _total_size(response, size)
                    if response.status_code == 206:
                        start = int(response.headers["content-range"].split()[1].split("-")[0])
                        if start != offset:
                            raise ConnectionFailed(f"asked for bytes from {offset}, got {start}")
                        mode = "ab"
                    else:  # the whole file: nothing to resume, or the checkpoint changed
                        offset, mode = 0, "wb"
                    with open(part, mode) as out:
                        done = offset
                        for chunk in response.iter_raw():  # as it arrives, kept if cut
                            out.write(chunk)
                            done += len(chunk)
                            failures = 0  # progress made: the retry budget is whole again
                            bar.update(done / total if total else 1.0,
                                       f"{human_bytes(done)} of {human_bytes(total)}")
                break
            except RangeNotSatisfiable:
                part.unlink(missing_ok=True)  # longer than the checkpoint: start over
            except (httpx.TransportError, ConnectionFailed) as exc:
                failures += 1
                if failures > t.retry.retries:
                    raise ConnectionFailed(f"download of {url} kept failing: {exc}") from exc
                t.sleep(t.retry.delay(failures - 1))
    finally:
        bar.close()
    actual = _sha256(part)
    if actual != etag or (expected and actual != expected):
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(str(target), etag, actual)
    os.replace(part, target)
    return target


def _total_size(response: httpx.Response, fallback: int) -> int:
    content_range = response.headers.get("content-range")
    if content_range and "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(response.headers.get("content-length") or fallback)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Jobs(_Resource):
    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._t.json("GET", f"/v1/jobs/{job_id}"))

    def list(self, model: str | Model | None = None,
             status: str | None = None) -> Iterator[Job]:
        model_id = self._client.models.resolve(model) if model is not None else None
        return self._pages("/v1/jobs", Job, {"model_id": model_id, "status": status})

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._t.json("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait(self, job_id: str, *, timeout: float | None = None,
             progress: bool | None = None) -> Job:
        """Follow the job until it ends; its final state, or :class:`JobFailed` (carrying the
        job's problem) if it failed or was cancelled."""
        bar = Bar(job_id, enabled=self._client._show(progress))
        try:
            job = self._client._poll(lambda: self.get(job_id),
                                     lambda j: j.status in JOB_DONE, timeout,
                                     lambda j: bar.update(j.progress, _phase(j)),
                                     f"job {job_id}")
        finally:
            bar.close()
        if job.status != "succeeded":
            raise JobFailed(job)
        return job


def _phase(job: Job) -> str:
    return f"{job.status}: {job.phase}" if job.phase else job.status


class DeletionRequests(_Resource):
    def get(self, request_id: str) -> DeletionRequest:
        return DeletionRequest.model_validate(
            self._t.json("GET", f"/v1/deletion-requests/{request_id}"))

    def list(self, model: str | Model | None = None, status: str | None = None,
             subject: str | None = None, overdue: bool = False) -> Iterator[DeletionRequest]:
        model_id = self._client.models.resolve(model) if model is not None else None
        return self._pages("/v1/deletion-requests", DeletionRequest,
                           {"model_id": model_id, "status": status, "subject": subject,
                            "overdue": "true" if overdue else None})

    def handle(self, request_id: str) -> DeletionRequestHandle:
        return DeletionRequestHandle(self._client, self.get(request_id))


class Receipts(_Resource):
    def get(self, request_id: str | DeletionRequest) -> SignedDocument:
        """The signed receipt of a completed request (``lethe receipts verify`` checks it)."""
        if isinstance(request_id, DeletionRequest):
            request_id = request_id.id
        return SignedDocument.model_validate(
            self._t.json("GET", f"/v1/deletion-requests/{request_id}/receipt"))

    def public_key(self) -> PublicKey:
        return PublicKey.model_validate(self._t.json("GET", "/v1/keys/receipt"))


class Audit(_Resource):
    def events(self) -> Iterator[AuditEvent]:
        return self._pages("/v1/audit", AuditEvent, limit=1000)

    def verify(self, anchor: SignedDocument | dict[str, Any] | None = None, *,
               full: bool = False) -> ChainVerdict:
        """Recompute the chain after the latest signed checkpoint (``full``: every event, from
        the first); with ``anchor`` (a receipt, a signed head, or its ``audit_head``) also
        check that the trail up to it was not rewritten since."""
        params: dict[str, Any] = {"full": "true"} if full else {}
        if anchor is not None:
            head = anchor.model_dump() if isinstance(anchor, SignedDocument) else anchor
            head = head.get("receipt", head)
            head = head.get("audit_head", head)
            params |= {"anchor_seq": head["seq"], "anchor_hash": head["hash"]}
        return ChainVerdict.model_validate(self._t.json("GET", "/v1/audit/verify",
                                                        params=params))

    def head(self) -> SignedDocument:
        return SignedDocument.model_validate(self._t.json("GET", "/v1/audit/head"))


class Webhooks(_Resource):
    def create(self, url: str, events: Iterable[str] = ("*",),
               description: str | None = None, *,
               idempotency_key: str | None = None) -> WebhookCreated:
        """Subscribe ``url`` to ``events``; the answer holds the signing secret, shown only
        this once (check deliveries with :func:`lethe_client.webhooks.verify`)."""
        body = {"url": url, "events": list(events), "description": description}
        return WebhookCreated.model_validate(self._t.json(
            "POST", "/v1/webhooks", json={k: v for k, v in body.items() if v is not None},
            idempotency_key=idempotency_key))

    def list(self) -> Iterator[Webhook]:
        return self._pages("/v1/webhooks", Webhook)

    def get(self, webhook_id: str) -> Webhook:
        return Webhook.model_validate(self._t.json("GET", f"/v1/webhooks/{webhook_id}"))

    def delete(self, webhook_id: str) -> None:
        self._t.send("DELETE", f"/v1/webhooks/{webhook_id}")

    def deliveries(self, webhook_id: str, status: str | None = None) -> Iterator[Delivery]:
        return self._pages(f"/v1/webhooks/{webhook_id}/deliveries", Delivery,
                           {"status": status})

    def delivery(self, webhook_id: str, delivery_id: str) -> Delivery:
        return Delivery.model_validate(self._t.json(
            "GET", f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"))

    def resend(self, webhook_id: str, delivery_id: str) -> Delivery:
        return Delivery.model_validate(self._t.json(
            "POST", f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend"))


class ApiKeys(_Resource):
    def list(self) -> list[ApiKey]:
        return [ApiKey.model_validate(k) for k in self._t.json("GET", "/v1/api-keys")]

    def create(self, name: str, *, idempotency_key: str | None = None) -> ApiKeyCreated:
        """Another key for this tenant; its token is in the answer, and only there."""
        return ApiKeyCreated.model_validate(self._t.json(
            "POST", "/v1/api-keys", json={"name": name}, idempotency_key=idempotency_key))

    def revoke(self, key_id: str) -> None:
        self._t.send("DELETE", f"/v1/api-keys/{key_id}")


class Catalogue(_Resource):
    def methods(self) -> list[Method]:
        return [Method.model_validate(m) for m in self._t.json("GET", "/v1/methods")]

    def architectures(self) -> list[Architecture]:
        return [Architecture.model_validate(a) for a in self._t.json("GET", "/v1/architectures")]

    def acceptance_gate(self) -> Gate:
        return Gate.model_validate(self._t.json("GET", "/v1/acceptance-gate"))


class DeletionRequestHandle:
    """A deletion request as it was last seen; :meth:`wait` follows it to its end."""

    def __init__(self, client: Client, request: DeletionRequest):
        self._client = client
        self.request = request

    def __repr__(self) -> str:
        return (f"<DeletionRequest {self.id} {self.request.status} job={self.job_id} "
                f"model={self.request.model_id}>")

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def job_id(self) -> str | None:
        return self.request.job_id

    @property
    def status(self) -> str:
        return self.request.status

    def refresh(self) -> DeletionRequest:
        self.request = self._client.deletion_requests.get(self.id)
        return self.request

    def job(self) -> Job | None:
        return self._client.jobs.get(self.job_id) if self.job_id else None

    def wait(self, *, timeout: float | None = None,
             progress: bool | None = None) -> DeletionRequest:
        """Follow the request (through every job it takes: a failed job's request is
        scheduled again) until it is completed; :class:`DeletionFailed`, carrying the
        problem, if it failed or was rejected."""
        bar = Bar(self.id, enabled=self._client._show(progress))

        def show(request: DeletionRequest) -> None:
            if request.status == "completed":
                bar.update(1.0, "completed")
            elif request.job is not None:
                bar.update(request.job.progress, _phase(request.job))

        try:
            self.request = self._client._poll(self.refresh, lambda r: r.status in REQUEST_DONE,
                                              timeout, show, f"deletion request {self.id}")
        finally:
            bar.close()
        if self.request.status != "completed":
            raise DeletionFailed(self.request)
        return self.request

    def receipt(self) -> SignedDocument:
        return self._client.receipts.get(self.id)


class Client:
    """A Lethe service. ``url`` and ``token`` default to ``LETHE_URL`` (else
    http://127.0.0.1:8000) and ``LETHE_TOKEN``.

    Requests are retried with exponential backoff on connection errors and on 429, 502, 503
    and 504 (``retries`` times, honouring ``Retry-After``); every POST carries an
    ``Idempotency-Key``, so a retried request is never done twice. ``progress``: show bars
    while waiting and downloading (None: when standard error is a terminal)."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float | httpx.Timeout = httpx.Timeout(60.0, read=600.0),
                 retries: int = 5, backoff: float = 0.5, max_backoff: float = 8.0,
                 poll_interval: float = 0.5, progress: bool | None = None,
                 http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        url = url or os.environ.get("LETHE_URL") or DEFAULT_URL
        token = token or os.environ.get("LETHE_TOKEN")
        if not token:
            raise ConfigurationError("no API token: pass token= or set LETHE_TOKEN (`lethe "
                                     "apikey create NAME` prints one)")
        self.url = url
        self.poll_interval = poll_interval
        self.progress = progress
        self._transport = Transport(url, token, timeout=timeout, http=http, sleep=sleep,
                                    retry=RetryPolicy(retries, backoff, max_backoff))
        self.datasets = Datasets(self)
        self.models = Models(self)
        self.versions = Versions(self)
        self.jobs = Jobs(self)
        self.deletion_requests = DeletionRequests(self)
        self.receipts = Receipts(self)
        self.audit = Audit(self)
        self.catalogue = Catalogue(self)
        self.webhooks = Webhooks(self)
        self.api_keys = ApiKeys(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def forget(self, model: str | Model, *, sample_ids: Iterable[str] | None = None,
               classes: Iterable[int] | None = None, subject: str | None = None,
               method: str | None = None, params: dict[str, Any] | None = None,
               fallback: list[str | dict[str, Any]] | None = None,
               gate: dict[str, Any] | BaseModel | None = None, reason: str | None = None,
               idempotency_key: str | None = None) -> DeletionRequestHandle:
        """Ask ``model`` to forget samples, whole classes, or (``subject`` alone) everything
        of one data subject. ``fallback``: methods tried in turn when a candidate fails the
        acceptance gate (``[]``: none); ``gate``: threshold overrides."""
        if isinstance(gate, BaseModel):
            gate = gate.model_dump(mode="json", exclude_unset=True)
        body = {"sample_ids": list(sample_ids) if sample_ids is not None else None,
                "classes": list(classes) if classes is not None else None,
                "subject": subject, "method": method, "params": params,
                "fallback": fallback, "gate": gate, "reason": reason}
        data = self._transport.json(
            "POST", f"/v1/models/{self.models.resolve(model)}/deletion-requests",
            json={k: v for k, v in body.items() if v is not None},
            idempotency_key=idempotency_key)
        return DeletionRequestHandle(self, DeletionRequest.model_validate(data))

    def health(self) -> bool:
        try:
            return self._transport.send("GET", "/healthz").status_code == 200
        except (ConnectionFailed, NotFound):
            return False

    def _show(self, progress: bool | None) -> bool:
        if progress is None:
            progress = self.progress
        if progress is None:
            return sys.stderr.isatty()
        return progress

    def _poll(self, fetch: Callable[[], T], done: Callable[[T], bool], timeout: float | None,
              show: Callable[[T], None], what: str) -> T:
        deadline = time.monotonic() + timeout if timeout is not None else None
        interval = self.poll_interval
        while True:
            current = fetch()
            show(current)
            if done(current):
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"{what} has not finished after {timeout} s")
            self._transport.sleep(interval)
            interval = min(interval * 1.25, 2.0)
