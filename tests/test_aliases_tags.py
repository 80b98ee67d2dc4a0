"""Aliases and tags: an alias names a version, a download by alias follows it, and when its
version is withdrawn (a newer one forgot data) the alias moves to the newer one, audited, so a
serving system that pulls ``production`` never gets withdrawn weights."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import httpx
import pytest

from tests.test_client import registered


@pytest.fixture
def files(tmp_path, digits_npz, digits_weights):
    (tmp_path / "digits.npz").write_bytes(digits_npz)
    (tmp_path / "mlp.safetensors").write_bytes(digits_weights)
    return tmp_path


def forget_some(lethe, model, dataset, n=20, start=0):
    ids = [s.id for s in lethe.datasets.samples(dataset, limit=start + n)][start:]
    return lethe.forget(model, sample_ids=ids, method="finetune", params={"epochs": 1}).wait()


def test_an_alias_moves_when_its_version_is_withdrawn(live_server, files, digits_weights):
    from lethe_client import Conflict, Gone, NotFound, ValidationFailed

    with live_server.client() as lethe:
        dataset, model = registered(lethe, files)
        assert lethe.models.set_alias(model, "production", 1).version == 1
        lethe.models.set_alias(model, "staging", 1)
        assert lethe.models.get(model).aliases == {"production": 1, "staging": 1}
        first = lethe.versions.download(model, "production", files / "prod-1.safetensors")
        assert first.read_bytes() == digits_weights

        forget_some(lethe, model, dataset)
        v2 = lethe.versions.get(model, 2)
        assert lethe.versions.get(model, 1).withdrawn_at is not None
        assert lethe.models.get_alias(model, "production").version == 2
        assert lethe.models.get(model).aliases == {"production": 2, "staging": 2}
        assert v2.aliases == ["production", "staging", "latest"]

        # The serving system's pull now gets version 2, never the withdrawn weights.
        pulled = lethe.versions.download(model, "production", files / "prod-2.safetensors")
        assert hashlib.sha256(pulled.read_bytes()).hexdigest() == v2.sha256
        with pytest.raises(Gone):
            lethe.versions.download(model, 1, files / "old.safetensors")
        raw = httpx.get(f"{live_server.url}/v1/models/{model.id}/aliases/production/checkpoint",
                        headers={"Authorization": f"Bearer {live_server.token}"})
        assert raw.headers["content-location"] == f"/v1/models/{model.id}/versions/2"
        assert raw.headers["etag"] == f'"{v2.sha256}"'

        moved = [e for e in lethe.audit.events() if e.action == "model_alias.moved"]
        assert sorted((e.data["alias"], e.data["from_version"], e.data["to_version"])
                      for e in moved) == [("production", 1, 2), ("staging", 1, 2)]

        with pytest.raises(Conflict):  # an alias cannot point at a withdrawn version
            lethe.models.set_alias(model, "production", 1)
        with pytest.raises(ValidationFailed):
            lethe.models.set_alias(model, "latest", 2)
        with pytest.raises(ValidationFailed):
            lethe.models.set_alias(model, "2nd", 2)  # an alias is never a number
        with pytest.raises(ValidationFailed):
            lethe.models.set_alias(model, "canary", 9)
        assert [a.alias for a in lethe.models.aliases(model)] == ["latest", "production",
                                                                 "staging"]
        lethe.models.delete_alias(model, "staging")
        with pytest.raises(NotFound):
            lethe.models.get_alias(model, "staging")
        assert lethe.versions.get(model, "latest").version == 2


def test_tags_on_models_and_versions_filter_listings(sqlite_api, digits_npz, digits_weights):
    api = sqlite_api
    dataset = api.upload_dataset(digits_npz).json()
    vision = api.register_model(dataset["id"], digits_weights,
                                tags='{"team": "vision", "stage": "dev"}').json()
    other = api.register_model(dataset["id"], digits_weights, tags='{"team": "audio"}').json()
    assert vision["tags"] == {"team": "vision", "stage": "dev"}

    def names(**params):
        return sorted(m["id"] for m in api.get("/v1/models", params=params).json()["items"])

    assert names(tag="team:vision") == [vision["id"]]
    assert names(tag="team") == sorted([vision["id"], other["id"]])
    assert names(tag=["team:vision", "stage:prod"]) == []
    assert api.put(f"/v1/models/{vision['id']}/tags/stage",
                   json={"value": "prod"}).json()["tags"]["stage"] == "prod"
    assert names(tag=["team:vision", "stage:prod"]) == [vision["id"]]
    assert api.delete(f"/v1/models/{other['id']}/tags/team").status_code == 204
    assert names(tag="team") == [vision["id"]]
    assert api.delete(f"/v1/models/{other['id']}/tags/team").status_code == 404

    tagged = api.put(f"/v1/models/{vision['id']}/versions/1/tags/reviewed",
                     json={"value": "yes"})
    assert tagged.status_code == 200 and tagged.json()["tags"] == {"reviewed": "yes"}
    versions = api.get(f"/v1/models/{vision['id']}/versions",
                       params={"tag": "reviewed:yes"}).json()["items"]
    assert [v["version"] for v in versions] == [1]
    assert api.get(f"/v1/models/{vision['id']}/versions",
                   params={"tag": "reviewed:no"}).json()["items"] == []
    # A model's tags are not its versions' and the other way round.
    assert "reviewed" not in api.get(f"/v1/models/{vision['id']}").json()["tags"]

    assert api.put(f"/v1/models/{vision['id']}/tags/a:b",
                   json={"value": "x"}).status_code == 422
    bad = api.post("/v1/models", data={"name": "x", "dataset_id": dataset["id"],
                                       "architecture": "mlp",
                                       "architecture_config": '{"hidden": [64]}',
                                       "tags": '{"k": 3}'},
                   files={"weights": ("w.safetensors", io.BytesIO(digits_weights))})
    assert bad.status_code == 422 and "tags.k" in bad.json()["detail"]
    stranger = api.new_tenant()
    assert stranger.put(f"/v1/models/{vision['id']}/tags/x",
                        json={"value": "y"}).status_code == 404
    assert stranger.get(f"/v1/models/{vision['id']}/aliases/latest").status_code == 404


def test_the_cli_sets_and_lists_aliases(live_server, files):
    import json

    from typer.testing import CliRunner

    from app.cli import cli

    env = {"LETHE_URL": live_server.url, "LETHE_TOKEN": live_server.token}
    with live_server.client() as lethe:
        registered(lethe, files, name="served")

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    assert "production -> version 1" in run("models", "alias", "served", "production", "1")
    listed = json.loads(run("models", "aliases", "served", "--json"))
    assert {a["alias"]: a["version"] for a in listed} == {"latest": 1, "production": 1}
    run("models", "tag", "served", "team=vision")
    assert json.loads(run("models", "list", "--tag", "team=vision", "--json"))[0]["name"] == \
        "served"
    path = run("versions", "download", "served", "production", "--out",
               files / "p.safetensors").splitlines()[-1]
    assert Path(path).read_bytes() == (files / "mlp.safetensors").read_bytes()
    run("models", "unalias", "served", "production")
    assert [a["alias"] for a in json.loads(run("models", "aliases", "served", "--json"))] == \
        ["latest"]
