"""What a killed upload leaves in the blob store's staging is swept when the API starts again;
what live processes are staging is not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stages like an upload does (a copy of the user's archive, an empty array file), then either
# dies by SIGKILL, as the API did in the fuzz run, or stays alive until its stdin closes.
STAGER = """
import os, signal, sys
from pathlib import Path
from app.core.storage import LocalBlobStore

store = LocalBlobStore(Path(sys.argv[1]))
store.temp_path(suffix=".zip").write_bytes(b"a copy of the user's data")
store.temp_path(suffix=".safetensors")
print(store.staging_dir, flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


def stager(blob_root: Path, fate: str) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", STAGER, str(blob_root), fate], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    staging = Path(process.stdout.readline().strip())
    assert sorted(p.suffix for p in staging.iterdir()) == [".safetensors", ".zip"]
    return process, staging


def start_the_api() -> None:
    from tests.conftest import api_client

    with api_client(run_worker=False) as api:
        assert api.get("/healthz").status_code == 200


def test_a_killed_uploads_staging_is_swept_at_the_next_start(configure):
    home = configure()
    blobs = home / "blobs"
    killed, killed_staging = stager(blobs, "die")
    assert killed.wait(timeout=30) < 0  # killed by the signal, nothing cleaned up
    alive, alive_staging = stager(blobs, "live")
    loose = blobs / "tmp" / "tmpold.zip"  # staged by a version before per-process folders
    loose.write_bytes(b"another copy")
    os.utime(loose, (time.time() - 60, time.time() - 60))
    try:
        start_the_api()
        assert not killed_staging.exists()
        assert not killed_staging.with_name(killed_staging.name + ".lock").exists()
        assert not loose.exists()
        # A replica or worker still at work keeps its staging.
        assert sorted(p.suffix for p in alive_staging.iterdir()) == [".safetensors", ".zip"]
    finally:
        alive.stdin.close()
        alive.wait(timeout=30)
    start_the_api()  # it has exited now: its leftovers go at the next start
    assert not alive_staging.exists()
    leftovers = [p for p in (blobs / "tmp").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert leftovers == []  # the running API's own staging folder is empty


def test_failed_uploads_delete_their_staged_files(configure):
    from tests.conftest import api_client

    home = configure()
    with api_client(run_worker=False) as api:
        response = api.upload_dataset(b"PK\x03\x04 not a zip", "broken.zip")
        assert response.status_code == 422, response.text
        staged = [p for p in (home / "blobs" / "tmp").rglob("*")
                  if p.is_file() and p.suffix != ".lock"]
        assert staged == []
