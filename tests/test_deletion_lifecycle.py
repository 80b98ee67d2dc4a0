"""Deletion requests as records: subjects, deadlines, retries, receipts, audit, real erasure."""

from __future__ import annotations

import io
import json
import time

import numpy as np
from sqlalchemy import text
from typer.testing import CliRunner

from tests.audit_tampering import rewrite_audit_history
from tests.test_api_flow import register_digits, sample_ids


def digits_with_subjects(digits_npz: bytes, prefix: str = "user") -> bytes:
    """The digits export with every training sample tagged ``<prefix>-<row % 50>``."""
    with np.load(io.BytesIO(digits_npz), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["subjects_train"] = np.array([f"{prefix}-{i % 50}"
                                         for i in range(len(arrays["y_train"]))])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def forget(api, model_id, **body):
    response = api.post(f"/v1/models/{model_id}/deletion-requests",
                        json={"method": "finetune", "params": {"epochs": 1}} | body)
    assert response.status_code == 202, response.text
    return response.json()


def wait_for_request(api, request_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = api.get(f"/v1/deletion-requests/{request_id}").json()
        if request["status"] not in ("received", "scheduled"):
            return request
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} still {request['status']}")


def test_a_subject_is_forgotten_whole(sqlite_api, digits_npz, digits_weights):
    api = sqlite_api
    _, model = register_digits(api, digits_with_subjects(digits_npz), digits_weights)
    request = forget(api, model["id"], subject="user-7")
    samples = api.get(f"/v1/datasets/{model['dataset_id']}/samples",
                      params={"limit": 1000}).json()
    samples = samples["items"] + api.get(f"/v1/datasets/{model['dataset_id']}/samples", params={
        "limit": 1000, "cursor": samples["next_cursor"]}).json()["items"]
    theirs = {s["id"] for s in samples if s["subject"] == "user-7"}
    assert theirs and request["num_samples"] == len(theirs)
    assert wait_for_request(api, request["id"])["status"] == "completed"
    version = api.get(f"/v1/models/{model['id']}/versions/2").json()
    assert version["forgotten_samples"] == len(theirs)
    listed = api.get(f"/v1/models/{model['id']}/versions/2/forgotten-samples",
                     params={"limit": 1000}).json()["items"]
    assert {s["id"] for s in listed} == theirs

    for subject in ("user-7", "nobody"):
        rejected = api.post(f"/v1/models/{model['id']}/deletion-requests",
                            json={"subject": subject})
        assert rejected.status_code == 422 and "subject" in rejected.json()["detail"]
    assert len(api.get("/v1/deletion-requests").json()["items"]) == 1


def test_deadlines_sort_filter_and_metrics(configure, digits_npz, digits_weights):
    from tests.conftest import api_client

    configure(deletion_deadline_days="0")  # every open request is overdue at once
    with api_client(run_worker=False) as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        ids = sample_ids(api, model["dataset_id"], 6)
        made = [forget(api, model["id"], sample_ids=ids[i : i + 2]) for i in range(0, 6, 2)]
        listed = api.get("/v1/deletion-requests", params={"overdue": "true", "limit": 2}).json()
        assert [r["id"] for r in listed["items"]] == [r["id"] for r in made[:2]]
        assert all(r["overdue"] for r in listed["items"])
        rest = api.get("/v1/deletion-requests",
                       params={"overdue": "true", "cursor": listed["next_cursor"]}).json()
        assert [r["id"] for r in rest["items"]] == [made[2]["id"]]
        metrics = api.client.get("/metrics").text
        assert "lethe_deletion_requests_overdue 3.0" in metrics
        assert "lethe_deletion_request_oldest_open_age_seconds" in metrics


def test_a_failing_request_is_retried_then_says_why(sqlite_api, digits_npz, digits_weights):
    from app.core.storage import get_blob_store

    api = sqlite_api
    _, model = register_digits(api, digits_npz, digits_weights)
    version = api.get(f"/v1/models/{model['id']}/versions/1").json()
    get_blob_store().delete(version["sha256"])  # the stored checkpoint is lost
    request = forget(api, model["id"], sample_ids=sample_ids(api, model["dataset_id"], 3))
    final = wait_for_request(api, request["id"])
    assert final["status"] == "failed" and final["attempts"] == 3
    assert "No such file" in final["error"]["detail"]
    jobs = api.get("/v1/jobs", params={"model_id": model["id"]}).json()["items"]
    assert [j["status"] for j in jobs] == ["failed"] * 3


def test_receipt_verifies_offline_and_detects_tampering(sqlite_api, digits_npz, digits_weights,
                                                        tmp_path):
    from app.cli import cli

    api = sqlite_api
    _, model = register_digits(api, digits_npz, digits_weights)
    ids = sample_ids(api, model["dataset_id"], 10)
    request = forget(api, model["id"], sample_ids=ids)
    early = api.get(f"/v1/deletion-requests/{request['id']}/receipt")
    assert early.status_code in (200, 409)
    wait_for_request(api, request["id"])
    receipt = api.get(f"/v1/deletion-requests/{request['id']}/receipt").json()
    body = receipt["receipt"]
    assert body["version_before"]["version"] == 1 and body["version_after"]["version"] == 2
    assert body["forgotten_samples"]["count"] == 10 and body["method"] == "finetune"
    assert body["hardware"]["torch"] and body["lethe_version"]

    key = tmp_path / "key.json"
    key.write_text(json.dumps(api.get("/v1/keys/receipt").json()))
    good, bad, id_file = tmp_path / "r.json", tmp_path / "bad.json", tmp_path / "ids.txt"
    good.write_text(json.dumps(receipt))
    body["forgotten_samples"]["count"] = 9
    bad.write_text(json.dumps(receipt))
    id_file.write_text("\n".join(reversed(ids)))
    runner = CliRunner()
    ok = runner.invoke(cli, ["receipt", "verify", str(good), "--public-key", str(key),
                             "--sample-ids", str(id_file)])
    assert ok.exit_code == 0 and ok.output.startswith("valid"), ok.output
    tampered = runner.invoke(cli, ["receipt", "verify", str(bad), "--public-key", str(key)])
    assert tampered.exit_code == 1 and "INVALID" in tampered.output
    id_file.write_text("\n".join(ids[:9]))
    wrong_ids = runner.invoke(cli, ["receipt", "verify", str(good), "--public-key", str(key),
                                    "--sample-ids", str(id_file)])
    assert wrong_ids.exit_code == 1


def test_audit_chain_verifies_and_names_the_tampered_event(sqlite_api, digits_npz,
                                                           digits_weights):
    from app.core.db import session_scope

    api = sqlite_api
    _, model = register_digits(api, digits_npz, digits_weights)
    request = forget(api, model["id"], sample_ids=sample_ids(api, model["dataset_id"], 5))
    wait_for_request(api, request["id"])
    for _ in range(100):  # erasure, the last step, follows the version's commit
        events = api.get("/v1/audit", params={"limit": 1000}).json()["items"]
        actions = [e["action"] for e in events]
        if "dataset.erased" in actions:
            break
        time.sleep(0.1)
    for action in ("dataset.uploaded", "model.registered", "deletion_request.received",
                   "job.started", "model_version.created", "model_version.withdrawn",
                   "job.succeeded", "deletion_request.completed", "dataset.erased"):
        assert action in actions
    assert api.get("/v1/audit/verify").json()["valid"] is True

    victim = next(e for e in events if e["action"] == "model.registered")
    with session_scope() as db:
        db.execute(text("UPDATE audit_events SET data = :data WHERE seq = :seq"),
                   {"data": json.dumps({"architecture": "something else"}),
                    "seq": victim["seq"]})
    verdict = api.get("/v1/audit/verify").json()
    assert verdict == {"valid": False, "checked": verdict["checked"],
                       "first_invalid_seq": victim["seq"], "anchor_matches": None,
                       "full": False, "verified_from_seq": 0, "checkpoint_mismatch_seq": None}
    assert api.get("/v1/audit/verify", params={"full": "true"}).json()["first_invalid_seq"] == \
        victim["seq"]


def test_superseded_versions_are_withdrawn_and_purged(configure, digits_npz, digits_weights):
    from app.core.storage import get_blob_store
    from tests.conftest import api_client

    configure(version_grace_seconds="3600")
    with api_client() as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        v1 = api.get(f"/v1/models/{model['id']}/versions/1").json()
        request = forget(api, model["id"], sample_ids=sample_ids(api, model["dataset_id"], 4))
        wait_for_request(api, request["id"])
        gone = api.get(f"/v1/models/{model['id']}/versions/1/checkpoint")
        assert gone.status_code == 410 and gone.json()["type"].endswith("version-withdrawn")
        assert api.get(f"/v1/models/{model['id']}/versions/2/checkpoint").status_code == 200
        assert get_blob_store().exists(v1["sha256"])  # still inside its grace period

    configure(version_grace_seconds="0")  # the next completion purges at once
    with api_client() as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        request = forget(api, model["id"], sample_ids=sample_ids(api, model["dataset_id"], 4))
        wait_for_request(api, request["id"])
        versions = api.get(f"/v1/models/{model['id']}/versions").json()["items"]
        assert versions[0]["withdrawn_at"] and not versions[1]["withdrawn_at"]
        assert not get_blob_store().exists(versions[0]["sha256"])


def test_erasure_waits_for_every_model_then_removes_the_bytes(sqlite_api, digits_npz,
                                                               digits_weights):
    from app.core.db import new_session
    from app.core.storage import get_blob_store
    from app.datasets.tables import Dataset

    api = sqlite_api
    dataset, first = register_digits(api, digits_npz, digits_weights)
    second = api.register_model(dataset["id"], digits_weights).json()
    ids = sample_ids(api, dataset["id"], 8)
    with new_session() as db:
        before = db.get(Dataset, dataset["id"])
        old_blobs = (before.upload_blob, before.arrays_blob)

    wait_for_request(api, forget(api, first["id"], sample_ids=ids)["id"])
    listed = api.get(f"/v1/datasets/{dataset['id']}/samples", params={"limit": 8}).json()
    assert all(s["deleted"] and not s["erased"] for s in listed["items"])  # second still has them

    wait_for_request(api, forget(api, second["id"], sample_ids=ids)["id"])
    for _ in range(100):  # erasure follows the version's commit
        listed = api.get(f"/v1/datasets/{dataset['id']}/samples", params={"limit": 8}).json()
        if all(s["erased"] for s in listed["items"]):
            break
        time.sleep(0.1)
    assert all(s["erased"] for s in listed["items"])
    store = get_blob_store()
    with new_session() as db:
        after = db.get(Dataset, dataset["id"])
    assert not any(store.exists(blob) for blob in old_blobs)
    with np.load(store.path(after.upload_blob), allow_pickle=False) as npz:
        remaining = set(npz["ids_train"].tolist())
        assert not remaining & set(ids) and len(remaining) == dataset["num_train"] - 8
    from worker.engine.data.arrays import DatasetArrays

    arrays = DatasetArrays.load(store.path(after.arrays_blob))
    rows = [arrays.ids_train.index(i) for i in ids]
    assert not arrays.x_train[rows].any() and arrays.x_train.any()
    # The evidence stays: ids and the original upload's hash.
    assert api.get(f"/v1/datasets/{dataset['id']}").json()["sha256"] == dataset["sha256"]


def test_a_rewritten_trail_is_caught_by_an_auditor_holding_an_earlier_receipt(
        sqlite_api, digits_npz, digits_weights, tmp_path):
    api = sqlite_api
    _, model = register_digits(api, digits_npz, digits_weights)
    request = forget(api, model["id"], sample_ids=sample_ids(api, model["dataset_id"], 5))
    wait_for_request(api, request["id"])
    document = api.get(f"/v1/deletion-requests/{request['id']}/receipt").json()
    anchor = document["receipt"]["audit_head"]
    signed_head = api.get("/v1/audit/head").json()
    assert signed_head["receipt"]["audit_head"]["seq"] >= anchor["seq"]
    key = tmp_path / "key.json"
    key.write_text(json.dumps(api.get("/v1/keys/receipt").json()))
    head_file = tmp_path / "head.json"
    head_file.write_text(json.dumps(signed_head))
    from app.cli import cli

    checked = CliRunner().invoke(cli, ["receipt", "verify", str(head_file), "--public-key",
                                       str(key)])
    assert checked.exit_code == 0, checked.output  # the signed head verifies offline
    params = {"anchor_seq": anchor["seq"], "anchor_hash": anchor["hash"]}
    assert api.get("/v1/audit/verify", params=params).json()["anchor_matches"] is True

    events = api.get("/v1/audit", params={"limit": 1000}).json()["items"]
    victim = next(e for e in events if e["action"] == "deletion_request.received")
    rewrite_audit_history(victim["seq"], victim["data"] | {"num_samples": 1})

    assert api.get("/v1/audit/verify").json()["valid"] is True  # the chain alone is fooled
    verdict = api.get("/v1/audit/verify", params=params).json()
    assert verdict["valid"] is False and verdict["anchor_matches"] is False
    bad = api.get("/v1/audit/verify", params={"anchor_seq": 1})
    assert bad.status_code == 422


def test_verify_shows_a_tenant_only_its_own_events(sqlite_api, digits_npz, digits_weights):
    api = sqlite_api
    register_digits(api, digits_npz, digits_weights)
    own = api.get("/v1/audit", params={"limit": 1000}).json()["items"]
    other = api.new_tenant()
    assert api.get("/v1/audit/verify").json()["checked"] == len(own)
    assert other.get("/v1/audit/verify").json() == {
        "valid": True, "checked": 0, "first_invalid_seq": None, "anchor_matches": None,
        "full": False, "verified_from_seq": 0, "checkpoint_mismatch_seq": None}
