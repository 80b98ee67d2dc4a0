"""Periodic upkeep, run by every worker: lost messages, withdrawn versions, due erasures, the
audit chain's signed checkpoints."""

from __future__ import annotations

import logging

from app.audit.verification import extend_checkpoints
from app.core.db import new_session
from app.core.storage import get_blob_store
from app.datasets.erasure import erase_everything_due, erase_forgotten
from app.deletion_requests.service import announce_overdue
from app.models.service import purge_withdrawn
from worker.model_inputs import drop_stale_tokenized

log = logging.getLogger(__name__)


def after_completion(dataset_id: str) -> None:
    """Right after a version is committed: purge what it superseded, erase what it forgot.

    Failures are logged, not raised: the job has succeeded, and the periodic pass retries.
    """
    try:
        with new_session() as db:
            purge_withdrawn(db, get_blob_store())
        erase_forgotten(dataset_id)
        drop_stale_tokenized()  # the erased texts' token ids go with their old blob
    except Exception:  # noqa: BLE001
        log.exception("post-completion upkeep failed; the periodic pass will retry")


def periodic_upkeep() -> None:
    with new_session() as db:
        purge_withdrawn(db, get_blob_store())
    erase_everything_due()
    drop_stale_tokenized()
    with new_session() as db:
        announce_overdue(db)
    # Verify what was appended since the last checkpoint (a bounded stretch per pass) and sign
    # a new one, so GET /v1/audit/verify has little to re-hash; skipped where this worker has
    # no receipt key.
    with new_session() as db:
        extend_checkpoints(db)
