"""The blob store on an S3-compatible object store, against moto's S3 server on loopback:
write once, verified reads, real erasure (versions and other hosts' caches included), the
bounded read-through cache, the API on s3://, and workers on separate "hosts"."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import moto_s3_server
from tests.test_celery_worker import Worker

ROOT = Path(__file__).resolve().parents[1]
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, **CREDENTIALS)


@pytest.fixture
def bucket(s3) -> str:
    name = f"lethe-test-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=name)
    return name


def make_store(endpoint: str, bucket: str, cache_dir: Path, cache_bytes: int = 1 << 30,
               grace_seconds: float = 30.0, prune_seconds: float = 60.0):
    from app.core.blob_cache import BlobCache
    from app.core.s3_storage import S3BlobStore

    return S3BlobStore(bucket, "lethe/blobs", BlobCache(cache_dir, cache_bytes, grace_seconds),
                       client_options={"endpoint_url": endpoint, **CREDENTIALS},
                       multipart_bytes=5 << 20, prune_seconds=prune_seconds)


@pytest.fixture
def store(s3_endpoint, bucket, tmp_path):
    return make_store(s3_endpoint, bucket, tmp_path / "cache")


def s3_settings(endpoint: str, bucket: str) -> dict[str, str]:
    return {"storage_url": f"s3://{bucket}/lethe", "s3_endpoint_url": endpoint,
            "s3_region": "us-east-1", "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing"}


def test_round_trip_is_content_addressed_and_written_once(store, s3, bucket, tmp_path):
    data = os.urandom(4096)
    first = store.put_bytes(data)
    assert first.sha256 == hashlib.sha256(data).hexdigest() and first.created
    assert s3.get_object(Bucket=bucket, Key=f"lethe/blobs/{first.sha256}")["Body"].read() == data
    assert store.exists(first.sha256) and store.path(first.sha256).read_bytes() == data
    assert b"".join(store.read_range(first.sha256, 10, 19)) == data[10:20]

    other_host = make_store(store.client.meta.endpoint_url, bucket, tmp_path / "other")
    again = other_host.put_bytes(data)
    assert again.sha256 == first.sha256 and not again.created
    # Two writers racing past the HEAD: the conditional write refuses the second, for a
    # single PUT and for a multipart upload alike, and leaves no parts behind.
    assert other_host._upload(store.path(first.sha256), first.sha256) is False
    big = os.urandom(11 << 20)  # three parts of 5 MiB
    stored = store.put_bytes(big)
    assert stored.created and stored.size == len(big)
    assert other_host.path(stored.sha256).read_bytes() == big
    assert other_host._upload(other_host.path(stored.sha256), stored.sha256) is False
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with pytest.raises(FileNotFoundError, match="No such file"):
        store.path("0" * 64)


def test_a_corrupted_object_or_cached_copy_is_never_served(store, s3, bucket, tmp_path):
    from app.core.storage import CorruptBlob, LocalBlobStore

    data = os.urandom(2048)
    blob = store.put_bytes(data)
    cached = store.cache.file(blob.sha256)
    cached.write_bytes(b"rot" + data[3:])  # the host's copy rots: dropped, fetched again
    assert store.path(blob.sha256).read_bytes() == data

    s3.put_object(Bucket=bucket, Key=store.key(blob.sha256), Body=b"tampered")
    store.cache.discard(blob.sha256)
    with pytest.raises(CorruptBlob, match=blob.sha256):
        store.path(blob.sha256)
    assert blob.sha256 not in store.cache.cached()  # nothing unverified was kept

    local = LocalBlobStore(tmp_path / "blobs")  # the local store raises the same error
    kept = local.put_bytes(data)
    local.file(kept.sha256).write_bytes(b"tampered")
    with pytest.raises(CorruptBlob, match=kept.sha256):
        local.path(kept.sha256)


def test_erasure_deletes_every_version_and_every_hosts_copy(store, s3, bucket, s3_endpoint,
                                                            tmp_path):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    data = os.urandom(1024)
    blob = store.put_bytes(data)
    s3.put_object(Bucket=bucket, Key=store.key(blob.sha256), Body=data)  # a second version
    host_b = make_store(s3_endpoint, bucket, tmp_path / "host-b")
    host_c = make_store(s3_endpoint, bucket, tmp_path / "host-c", prune_seconds=0.5)
    for host in (host_b, host_c):
        assert host.path(blob.sha256).read_bytes() == data
    assert blob.sha256 in store.cache.cached()  # the writer's own copy

    store.delete(blob.sha256)
    listed = s3.list_object_versions(Bucket=bucket, Prefix=store.key(blob.sha256))
    assert not listed.get("Versions") and not listed.get("DeleteMarkers")
    assert not store.exists(blob.sha256) and blob.sha256 not in store.cache.cached()
    # Host B asks for it: refused, and its copy goes at once.
    with pytest.raises(FileNotFoundError, match="No such file"):
        host_b.path(blob.sha256)
    assert not host_b.cache.file(blob.sha256).exists()
    # Host C never asks again: its pruning thread drops the copy within its period.
    deadline = time.monotonic() + 10
    while host_c.cache.file(blob.sha256).exists():
        assert time.monotonic() < deadline, "host C still holds the erased blob"
        time.sleep(0.1)
    store.delete(blob.sha256)  # idempotent


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(s3_endpoint, bucket,
                                                                 tmp_path):
    writer = make_store(s3_endpoint, bucket, tmp_path / "writer")
    blobs = [writer.put_bytes(os.urandom(1000)).sha256 for _ in range(4)]
    reader = make_store(s3_endpoint, bucket, tmp_path / "reader", cache_bytes=2500,
                        grace_seconds=0)
    a, b, c, d = blobs
    reader.path(a)
    reader.path(b)
    reader.path(a)  # a is now the more recently used of the two
    reader.path(c)  # 3,000 bytes: b goes
    assert sorted(reader.cache.cached()) == sorted([a, c])
    reader.path(d)  # a goes
    assert sorted(reader.cache.cached()) == sorted([c, d])
    assert reader.cache.size() <= 2500
    # A blob in use (just handed out) is not pulled away while the grace period lasts.
    patient = make_store(s3_endpoint, bucket, tmp_path / "patient", cache_bytes=1500)
    for sha256 in blobs:
        assert hashlib.sha256(patient.path(sha256).read_bytes()).hexdigest() == sha256
    assert len(patient.cache.cached()) == 4


READER = """
import hashlib, sys
from pathlib import Path
from app.core.blob_cache import BlobCache
from app.core.s3_storage import S3BlobStore

endpoint, bucket, cache, *blobs = sys.argv[1:]
store = S3BlobStore(bucket, "lethe/blobs", BlobCache(Path(cache), 2000, grace_seconds=0),
                    client_options={"endpoint_url": endpoint, "aws_access_key_id": "testing",
                                    "aws_secret_access_key": "testing",
                                    "region_name": "us-east-1"})
for round in range(6):
    for sha256 in blobs:
        try:
            with open(store.path(sha256), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue  # evicted by the other process between path() and open(): allowed
        assert hashlib.sha256(data).hexdigest() == sha256, "a half-written or wrong file"
print("ok")
"""


def test_two_processes_share_one_hosts_cache(s3_endpoint, bucket, tmp_path):
    writer = make_store(s3_endpoint, bucket, tmp_path / "writer")
    blobs = [writer.put_bytes(os.urandom(900)).sha256 for _ in range(5)]
    shared = tmp_path / "shared-cache"
    readers = [subprocess.Popen([sys.executable, "-c", READER, s3_endpoint, bucket, str(shared),
                                 *blobs], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for reader in readers:
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0 and out.strip() == "ok", err[-2000:]
    cached = list((shared / "blobs").rglob("*"))
    assert sum(p.stat().st_size for p in cached if p.is_file()) <= 2000 + 900
    assert not [p for p in (shared / "tmp").rglob("fill-*")]  # no partial download left


@pytest.mark.slow
def test_the_api_flow_on_an_object_store(configure, s3_endpoint, bucket, s3, digits_npz,
                                         digits_weights):
    from tests.conftest import api_client
    from tests.test_api_flow import register_digits, sample_ids

    home = configure(**s3_settings(s3_endpoint, bucket))
    with api_client() as api:
        dataset, model = register_digits(api, digits_npz, digits_weights)
        ids = sample_ids(api, dataset["id"], 30)
        response = api.post(f"/v1/models/{model['id']}/deletion-requests",
                            json={"sample_ids": ids, "method": "finetune",
                                  "params": {"epochs": 1}})
        assert response.status_code == 202, response.text
        job = api.wait_for_job(response.json()["job_id"], timeout=120)
        assert job["status"] == "succeeded", job
        version = api.get(f"/v1/models/{model['id']}/versions/2").json()
        download = api.get(f"/v1/models/{model['id']}/versions/2/checkpoint")
        assert download.status_code == 200
        assert download.headers["etag"] == f'"{version["sha256"]}"'
        assert hashlib.sha256(download.content).hexdigest() == version["sha256"]
        part = api.get(f"/v1/models/{model['id']}/versions/2/checkpoint",
                       headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == download.content[:100]

        deadline = time.monotonic() + 30
        while not all(s["erased"] for s in api.get(
                f"/v1/datasets/{dataset['id']}/samples", params={"limit": 30}).json()["items"]):
            assert time.monotonic() < deadline, "the forgotten samples were not erased"
            time.sleep(0.2)
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert f"lethe/{version['sha256']}" in keys
        # The upload was rewritten without the 30 samples: the old object and this host's
        # cached copy of it are gone.
        assert f"lethe/{dataset['sha256']}" not in keys
        cache = home / "blob-cache" / "blobs"
        assert not (cache / dataset["sha256"][:2] / dataset["sha256"]).exists()
    assert not (home / "blobs").exists()  # nothing went to a local store


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_workers_on_two_hosts_share_only_the_database_broker_and_bucket(
        configure, postgres_url, s3_endpoint, bucket, digits_npz, digits_weights, tmp_path):
    """Two Celery workers, each with its own home, cache and node name; a job on the model
    whose version 2 one of them wrote is run by the other, reading that blob from the bucket."""
    import redis
    from sqlalchemy import select

    from app.core.db import new_session
    from app.core.storage import get_blob_store
    from app.deletion_requests import receipts
    from app.jobs.tables import Job
    from tests.conftest import api_client
    from tests.services import REDIS_URL, require_redis
    from tests.test_api_flow import register_digits, sample_ids
    require_redis()
    queue = f"lethe-test-{secrets.token_hex(4)}"
    configure(database_url=postgres_url, broker_url=REDIS_URL, queue_name=queue,
              **s3_settings(s3_endpoint, bucket))
    shared = {k: v for k, v in os.environ.items() if k.startswith("LETHE_")}
    key_pem = Path(shared["LETHE_HOME"], "receipt-key.pem")
    receipts.signing_key()  # made in the API's home, then provisioned to each host
    workers, homes = {}, {}
    for name in ("alpha", "beta"):
        homes[name] = tmp_path / name
        homes[name].mkdir()
        (homes[name] / "receipt-key.pem").write_bytes(key_pem.read_bytes())
        workers[name] = NodeWorker(shared | {"LETHE_HOME": str(homes[name])}, name,
                                   tmp_path / f"{name}.log")
    try:
        with api_client() as api:
            dataset, first = register_digits(api, digits_npz, digits_weights)
            second = api.register_model(dataset["id"], digits_weights).json()
            ids = sample_ids(api, dataset["id"], 20)

            def forget(model_id: str, chunk: list[str]) -> str:
                response = api.post(f"/v1/models/{model_id}/deletion-requests",
                                    json={"sample_ids": chunk, "method": "finetune",
                                          "params": {"epochs": 1}, "fallback": []})
                assert response.status_code == 202, response.text
                return response.json()["job_id"]

            # Both at once: each worker can take one.
            submitted = [forget(first["id"], ids[:5]), forget(second["id"], ids[5:10])]
            done = [api.wait_for_job(job_id, timeout=120) for job_id in submitted]
            logs = {n: (tmp_path / f"{n}.log").read_text()[-2000:] for n in workers}
            assert [j["status"] for j in done] == ["succeeded"] * 2, (done, logs)
            ran = _ran_by(new_session, select, Job, [j["id"] for j in done])
            assert set(ran.values()) <= {"alpha@lethe-test", "beta@lethe-test"}
            writer = ran[done[0]["id"]].split("@")[0]
            reader = "beta" if writer == "alpha" else "alpha"
            workers.pop(writer).stop()  # its host goes away, its cache with it

            v2 = api.get(f"/v1/models/{first['id']}/versions/2").json()["sha256"]
            reader_cache = homes[reader] / "blob-cache" / "blobs"
            assert not (reader_cache / v2[:2] / v2).exists()  # only the bucket has it
            third = api.wait_for_job(forget(first["id"], ids[10:15]), timeout=120)
            assert third["status"] == "succeeded", (third, (tmp_path / f"{reader}.log")
                                                    .read_text()[-3000:])
            assert third["base_version"] == 2  # the writer's checkpoint, read from the bucket
            assert _ran_by(new_session, select, Job, [third["id"]]) == {
                third["id"]: f"{reader}@lethe-test"}
            # Version 2 carried samples version 3 forgot: purged from the bucket and from
            # the cache of the host that read it.
            assert not get_blob_store().exists(v2)
            assert not (reader_cache / v2[:2] / v2).exists()
            for model in (first, second):  # every version is readable from the API
                latest = api.get(f"/v1/models/{model['id']}").json()["latest_version"]
                response = api.get(f"/v1/models/{model['id']}/versions/{latest}/checkpoint")
                assert response.status_code == 200
            assert not (homes[writer] / "blobs").exists()  # no host stored blobs locally
    finally:
        for worker in workers.values():
            worker.stop()
        redis.Redis.from_url(REDIS_URL).delete(queue, f"{queue}.webhooks")


class NodeWorker(Worker):
    """A `lethe worker` with a node name of its own (two share this machine)."""

    def __init__(self, env: dict[str, str], name: str, log: Path):
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--node", f"{name}@lethe-test"],
            cwd=ROOT, env=os.environ | env | {"PYTHONUNBUFFERED": "1"}, stdout=log.open("w"),
            stderr=subprocess.STDOUT, start_new_session=True)


def _ran_by(new_session, select, Job, job_ids: list[str]) -> dict[str, str]:
    with new_session() as db:
        return dict(db.execute(select(Job.id, Job.worker).where(Job.id.in_(job_ids))).all())


def test_a_killed_uploads_parts_are_aborted_but_a_live_ones_are_not(store, s3, bucket):
    from app.core.s3_storage import ABANDONED_UPLOAD_SECONDS

    started = s3.create_multipart_upload(Bucket=bucket, Key=store.key("a" * 64))
    s3.upload_part(Bucket=bucket, Key=store.key("a" * 64), UploadId=started["UploadId"],
                   PartNumber=1, Body=b"a copy of the user's data")
    # moto reports one fixed initiation time for every upload: "now" is placed relative to it.
    initiated = s3.list_multipart_uploads(Bucket=bucket)["Uploads"][0]["Initiated"].timestamp()
    soon = initiated + ABANDONED_UPLOAD_SECONDS - 60
    assert store.sweep_staging(older_than=soon) == 0  # maybe another host's, still at work
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert store.sweep_staging(older_than=initiated + ABANDONED_UPLOAD_SECONDS + 60) == 1
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_storage_settings():
    from pydantic import ValidationError

    from app.core.config import Settings

    s3 = Settings(storage_url="s3://my-bucket/some/prefix/")
    assert s3.s3_location == ("my-bucket", "some/prefix")
    assert Settings(storage_url="s3://my-bucket").s3_location == ("my-bucket", "")
    assert Settings(storage_url="file:///srv/blobs").blob_root == Path("/srv/blobs")
    for wrong in ("gs://bucket", "s3:///prefix-only"):
        with pytest.raises(ValidationError):
            Settings(storage_url=wrong)
