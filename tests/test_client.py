"""The Python client (lethe_client) against the real service on a real port: typed results,
problems as typed errors, waiting, names for ids, retries that never double a request, and
downloads that resume and check their sha256."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pytest

from tests.proxy import FaultyProxy

MLP = {"architecture": "mlp", "architecture_config": {"hidden": [64]}}


@pytest.fixture
def files(tmp_path, digits_npz, digits_weights):
    (tmp_path / "digits.npz").write_bytes(digits_npz)
    (tmp_path / "mlp.safetensors").write_bytes(digits_weights)
    return tmp_path


def registered(lethe, files, name: str = "digits-mlp"):
    dataset = lethe.datasets.upload(files / "digits.npz", name="digits")
    model = lethe.models.register(files / "mlp.safetensors", dataset=dataset, name=name, **MLP)
    return dataset, model


def test_a_deletion_from_upload_to_download(live_server, files, capsys):
    from lethe_client.models import Dataset, DeletionRequest, Model, Version

    with live_server.client() as lethe:
        dataset, model = registered(lethe, files)
        assert isinstance(dataset, Dataset) and dataset.num_train == 1437
        assert isinstance(model, Model) and model.latest_version == 1
        ids = [s.id for s in lethe.datasets.samples(dataset, limit=50)]
        assert len(ids) == 50

        # A name works where an id does.
        request = lethe.forget("digits-mlp", sample_ids=ids, method="finetune",
                               params={"epochs": 1}, subject="user-7")
        assert request.status == "scheduled" and request.job_id
        done = request.wait(progress=True)
        assert isinstance(done, DeletionRequest) and done.status == "completed"
        assert (done.version_before, done.version_after) == (1, 2)
        bar = capsys.readouterr().err
        assert request.id in bar and "100%" in bar

        version = lethe.versions.get(model, "latest")
        assert isinstance(version, Version) and version.version == 2
        path = lethe.versions.download(model, "latest", files / "v2.safetensors")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == version.sha256
        assert not (files / "v2.safetensors.part").exists()

        receipt = request.receipt()
        assert receipt.receipt["request_id"] == request.id and receipt.algorithm == "Ed25519"
        verdict = lethe.audit.verify(receipt)
        assert verdict.valid and verdict.anchor_matches and verdict.checked > 0
        actions = {event.action for event in lethe.audit.events()}
        assert {"dataset.uploaded", "model.registered", "receipt.issued"} <= actions
        assert lethe.jobs.get(request.job_id).status == "succeeded"


def test_errors_are_typed_and_carry_the_problem(live_server, files):
    from lethe_client import (
        Ambiguous,
        ConfigurationError,
        NotFound,
        Unauthorized,
        UnknownName,
        ValidationFailed,
    )

    with live_server.client() as lethe:
        with pytest.raises(NotFound) as missing:
            lethe.jobs.get("job_000000000000000000000000")
        assert missing.value.status == 404 and missing.value.problem.type.endswith("not-found")

        dataset, model = registered(lethe, files)
        with pytest.raises(ValidationFailed) as invalid:
            lethe.forget(model, sample_ids=["no-such-sample"])
        assert invalid.value.problem.model_extra["unknown_sample_ids"] == ["no-such-sample"]
        with pytest.raises(ValidationFailed) as bad_field:
            lethe.forget(model, classes=[1], method="finetune", params={"epochs": -1})
        assert bad_field.value.problem.errors[0].field.startswith("params.epochs")

        lethe.models.register(files / "mlp.safetensors", dataset=dataset, name="twin", **MLP)
        lethe.models.register(files / "mlp.safetensors", dataset=dataset, name="twin", **MLP)
        with pytest.raises(Ambiguous):
            lethe.models.get("twin")
        with pytest.raises(UnknownName):
            lethe.models.get("nobody")

    with pytest.raises(Unauthorized) as unauthorized, \
            live_server.client(token="lethe_wrong") as stranger:
        stranger.jobs.get("job_000000000000000000000000")
    assert unauthorized.value.problem.status == 401

    with pytest.raises(ConfigurationError):
        from lethe_client import Client

        Client(live_server.url, token="")


def test_wait_raises_the_failure_with_its_problem(configure, files):
    from lethe_client import DeletionFailed, JobFailed

    from tests.conftest import live_server_at

    configure(request_max_attempts="1")
    with live_server_at() as server, server.client() as lethe:
        _, model = registered(lethe, files)
        # One epoch of fine-tuning cannot take a class to 0% accuracy: the gate refuses it,
        # and with no fallback the job fails.
        request = lethe.forget(model, classes=[4], method="finetune", params={"epochs": 1},
                               fallback=[], gate={"class_forget_max": 0})
        with pytest.raises(DeletionFailed) as failed:
            request.wait(timeout=60)
        problem = failed.value.problem
        assert problem.status == 422 and problem.type.endswith("gate-failed"), problem
        assert "forgotten-class accuracy" in problem.detail and problem.model_extra["candidates"]
        assert failed.value.request.status == "failed"
        with pytest.raises(JobFailed) as job_failed:
            lethe.jobs.wait(request.job_id, timeout=10)
        assert job_failed.value.problem == problem and job_failed.value.job.status == "failed"


def test_a_retry_after_a_dropped_connection_does_not_create_a_second_request(live_server,
                                                                             files):
    with FaultyProxy(live_server.port) as proxy, \
            live_server.client(url=proxy.url) as lethe:
        _, model = registered(lethe, files)
        drop = proxy.add("drop", r"^POST /v1/models/\S+/deletion-requests")
        request = lethe.forget(model, classes=[2], method="finetune", params={"epochs": 1})
        assert drop.fired == 1
        sent = proxy.requests(r"^POST /v1/models/\S+/deletion-requests")
        assert len(sent) == 2  # the first (answered, but the answer lost) and its retry
        keys = {re.search(r"(?im)^idempotency-key: (\S+)", head).group(1) for head in sent}
        assert len(keys) == 1

        requests = list(lethe.deletion_requests.list(model=model))
        assert [r.id for r in requests] == [request.id]
        assert len(list(lethe.jobs.list(model=model))) == 1
        # Every POST the client sent carried a key.
        assert all(re.search(r"(?im)^idempotency-key: ", head)
                   for head in proxy.heads if head.startswith("POST"))


def test_503_and_429_are_retried_with_backoff(live_server, files):
    slept = []
    with FaultyProxy(live_server.port) as proxy, \
            live_server.client(url=proxy.url, sleep=slept.append) as lethe:
        proxy.add("status", r"^POST /v1/datasets", status=503)
        proxy.add("status", r"^GET /v1/datasets/", status=429)
        dataset = lethe.datasets.upload(files / "digits.npz")
        assert lethe.datasets.get(dataset.id).id == dataset.id
        assert len(proxy.requests(r"^POST /v1/datasets")) == 2
        assert len(slept) == 2 and all(0 <= s < 1 for s in slept)
        assert len(list(lethe.datasets.list())) == 1


def test_connection_errors_give_up_after_the_retries(files):
    from lethe_client import Client, ConnectionFailed

    slept = []
    with Client("http://127.0.0.1:9", "t", retries=3, sleep=slept.append) as lethe, \
            pytest.raises(ConnectionFailed, match="after 4 attempts"):
        lethe.jobs.get("job_000000000000000000000000")
    assert len(slept) == 3 and slept[0] < slept[-1]


def test_an_interrupted_download_resumes_with_range(live_server, files, digits_weights):
    from lethe_client import ChecksumMismatch, ConnectionFailed

    size = len(digits_weights)
    with FaultyProxy(live_server.port) as proxy:
        with live_server.client(url=proxy.url) as lethe:
            _, model = registered(lethe, files)
            target = files / "v1.safetensors"
            # Cut mid-body: the client resumes from the bytes it has.
            proxy.add("cut", r"^GET /v1/models/\S+/versions/1/checkpoint", after=size // 2)
            lethe.versions.download(model, 1, target)
            assert target.read_bytes() == digits_weights
            first, resumed = proxy.requests(r"/versions/1/checkpoint")
            assert "range:" not in first.lower()
            offset = int(re.search(r"(?im)^range: bytes=(\d+)-$", resumed).group(1))
            assert 0 < offset < size
            assert re.search(r'(?im)^if-range: "[0-9a-f]{64}"$', resumed)

        # A run that died (no retries left) leaves its .part; the next run resumes it.
        target.unlink()
        with live_server.client(url=proxy.url, retries=0) as lethe:
            proxy.add("cut", r"/versions/1/checkpoint", after=size // 3)
            with pytest.raises(ConnectionFailed):
                lethe.versions.download(model, 1, target)
        part = files / "v1.safetensors.part"
        assert 0 < part.stat().st_size < size and not target.exists()
        with live_server.client(url=proxy.url) as lethe:
            lethe.versions.download(model, 1, target)
        assert target.read_bytes() == digits_weights and not part.exists()
        assert re.search(r"(?im)^range: bytes=\d+-$", proxy.heads[-1])

        # A .part that is not a prefix of the checkpoint is caught by the sha256 check.
        target.unlink()
        part.write_bytes(b"\0" * 100)
        with live_server.client(url=proxy.url) as lethe, pytest.raises(ChecksumMismatch):
            lethe.versions.download(model, 1, target)
        assert not part.exists() and not target.exists()


def test_the_progress_bar_on_a_terminal():
    from lethe_client._progress import Bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = Bar("job_1", stream=stream)
    bar.update(0.5, "running: epoch 1/2")
    bar.update(1.0, "succeeded")
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "50%" in text and "100% succeeded" in text and text.endswith("\n")


def test_tables_are_uploaded_with_their_columns_named(live_server, tmp_path):
    """A text CSV with string labels and a feature table, through the client and the CLI."""
    from lethe_client import ProblemError
    from typer.testing import CliRunner

    from app.cli import cli

    texts = tmp_path / "tickets.csv"
    texts.write_text("ticket,topic,who\n" + "".join(
        f"\"please reset my password {i}\",{'billing' if i % 2 else 'access'},user-{i % 5}\n"
        for i in range(40)))
    with live_server.client() as lethe:
        dataset = lethe.datasets.upload(texts, name="tickets", text_column="ticket",
                                        label_column="topic", subject_column="who",
                                        test_fraction=0.25)
        with pytest.raises(ProblemError, match="no_such_column") as refused:
            lethe.datasets.upload(texts, name="bad", text_column="no_such_column",
                                  label_column="topic")
        assert refused.value.problem.status == 422
        assert [d.name for d in lethe.datasets.list()] == ["tickets"]  # nothing stored
    assert dataset.classes == ["access", "billing"]  # string labels, in sorted order
    assert dataset.num_train + dataset.num_test == 40 and dataset.num_test > 0

    table = tmp_path / "table.csv"
    table.write_text("a,b,noise,y\n" + "".join(f"{i},{i * 2},{i % 3},{i % 2}\n"
                                               for i in range(30)))
    result = CliRunner().invoke(cli, [
        "datasets", "upload", str(table), "--name", "table", "--label-column", "y",
        "--feature-column", "a", "--feature-column", "b", "--json"],
        env={"LETHE_URL": live_server.url, "LETHE_TOKEN": live_server.token})
    assert result.exit_code == 0, result.output
    uploaded = json.loads(result.output)
    assert uploaded["input_shape"] == [2] and uploaded["num_classes"] == 2
