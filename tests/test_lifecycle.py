"""The rest of the lifecycle: deleting a model or a dataset erases their blobs (audited, and
refused while a job runs or a model still needs the data), API keys are listed and revoked
(a revoked key answers 401), and a version's forgotten samples come as a count and a list."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.test_client import MLP


@pytest.fixture
def files(tmp_path, digits_npz, digits_weights):
    (tmp_path / "digits.npz").write_bytes(digits_npz)
    (tmp_path / "mlp.safetensors").write_bytes(digits_weights)
    return tmp_path


def test_deleting_a_model_erases_its_blobs(live_server, files):
    from lethe_client import Conflict, NotFound

    from app.core.storage import get_blob_store

    store = get_blob_store()
    with live_server.client() as lethe:
        dataset = lethe.datasets.upload(files / "digits.npz")
        model = lethe.models.register(files / "mlp.safetensors", dataset=dataset, name="a",
                                      **MLP)
        twin = lethe.models.register(files / "mlp.safetensors", dataset=dataset, name="b",
                                     **MLP)  # the same weights: one blob for both
        ids = [s.id for s in lethe.datasets.samples(dataset, limit=20)]
        request = lethe.forget(model, sample_ids=ids, method="finetune", params={"epochs": 1})
        request.wait()
        assert lethe.versions.get(model, 2).forgotten_samples == 20
        assert sorted(lethe.versions.forgotten(model, 2)) == sorted(ids)
        v1, v2 = (lethe.versions.get(model, n).sha256 for n in (1, 2))
        assert store.exists(v1) and store.exists(v2)

        with pytest.raises(Conflict, match="delete them first"):
            lethe.datasets.delete(dataset)
        lethe.models.delete(model)
        assert not store.exists(v2)
        assert store.exists(v1)  # the twin's version 1 still uses it
        with pytest.raises(NotFound):
            lethe.models.get(model.id)
        with pytest.raises(NotFound):  # its requests and jobs went with it
            lethe.deletion_requests.get(request.id)
        deleted = [e for e in lethe.audit.events() if e.action == "model.deleted"]
        assert deleted[0].data["blobs_erased"] == [v2] and deleted[0].subject_id == model.id
        assert lethe.versions.download(twin, 1, files / "twin.safetensors").exists()

        lethe.models.delete(twin)
        assert not store.exists(v1)
        lethe.datasets.delete(dataset)
        upload = dataset.sha256
        assert not store.exists(upload)
        assert list(lethe.datasets.list()) == [] and list(lethe.models.list()) == []
        assert lethe.audit.verify().valid


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_a_model_with_a_job_waiting_is_not_deleted(backend, request, configure, digits_npz,
                                                   digits_weights):
    from tests.conftest import api_client
    from tests.test_api_flow import register_digits, sample_ids

    if backend == "postgres":
        configure(database_url=request.getfixturevalue("postgres_url"))
    else:
        configure()
    with api_client(run_worker=False) as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        job_id = api.post(f"/v1/models/{model['id']}/deletion-requests",
                          json={"sample_ids": sample_ids(api, model["dataset_id"], 3)}
                          ).json()["job_id"]
        refused = api.delete(f"/v1/models/{model['id']}")
        assert refused.status_code == 409 and refused.json()["jobs"] == [job_id]
        api.post(f"/v1/jobs/{job_id}/cancel")
        assert api.delete(f"/v1/models/{model['id']}").status_code == 204
        assert api.get(f"/v1/jobs/{job_id}").status_code == 404
        assert api.delete(f"/v1/models/{model['id']}").status_code == 404
        assert api.delete(f"/v1/datasets/{model['dataset_id']}").status_code == 204
        assert api.get(f"/v1/datasets/{model['dataset_id']}").status_code == 404


def test_a_revoked_key_answers_401(live_server):
    from lethe_client import Unauthorized

    from app.cli import cli

    with live_server.client() as lethe:
        created = lethe.api_keys.create("ci")
        assert created.token.startswith("lethe_")
        with live_server.client(token=created.token) as ci:
            assert [k.current for k in ci.api_keys.list()] == [False, True]
            ci.jobs.list()
        lethe.api_keys.revoke(created.id)
        with live_server.client(token=created.token) as ci, pytest.raises(Unauthorized):
            list(ci.jobs.list())
        [listed] = [k for k in lethe.api_keys.list() if k.id == created.id]
        assert listed.revoked_at is not None

    # The operator's command does the same on the database, for any tenant.
    runner = CliRunner()
    made = json.loads(runner.invoke(cli, ["apikey", "create", "ops", "--json"]).stdout)
    with live_server.client(token=made["token"]) as ops:
        assert ops.api_keys.list()[0].name == "ops"
    revoked = runner.invoke(cli, ["apikey", "revoke", made["key_id"]])
    assert revoked.exit_code == 0, revoked.output
    with live_server.client(token=made["token"]) as ops, pytest.raises(Unauthorized):
        ops.api_keys.list()
    listing = runner.invoke(cli, ["apikey", "list", "--tenant", made["tenant_id"]]).stdout
    assert made["key_id"] in listing and "REVOKED" in listing
    assert runner.invoke(cli, ["apikey", "revoke", "key_nope"]).exit_code == 2
