"""Incremental audit verification from signed checkpoints: what it re-hashes, what it finds,
what only a full check finds, and that a forged checkpoint buys nothing. On SQLite and on a
fresh PostgreSQL database each (the tests rewrite the trail)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, select, text

from tests.audit_tampering import rewrite_audit_history
from tests.conftest import Api
from tests.services import fresh_postgres_database

EVERY = 5  # a checkpoint once a verification covers this many events past the last one


@dataclass
class Chain:
    api: Api
    tenant_id: str

    def append(self, n: int, tenant_id: str | None = "own") -> None:
        from app.audit import service
        from app.core.db import session_scope

        with session_scope() as db:
            for i in range(n):
                service.record(db, "test.event", "thing", f"t{i}",
                               tenant_id=self.tenant_id if tenant_id == "own" else tenant_id,
                               actor="key_test", data={"i": i, "note": "é", "x": 0.1,
                                                       "nested": {"b": [1, None], "a": True}})

    def verify(self, **params) -> dict:
        response = self.api.get("/v1/audit/verify", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def execute(self, sql: str, **params) -> None:
        from app.core.db import session_scope

        with session_scope() as db:
            db.execute(text(sql), params)

    def checkpoints(self) -> list[tuple[int, int]]:
        from app.audit.tables import AuditCheckpoint
        from app.core.db import session_scope

        with session_scope() as db:
            return [tuple(r) for r in db.execute(select(AuditCheckpoint.seq, AuditCheckpoint.count)
                                                 .order_by(AuditCheckpoint.id))]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def chain(request, configure) -> Iterator[Chain]:
    from fastapi.testclient import TestClient

    from app.core.db import session_scope
    from app.main import create_app
    from app.tenants.service import create_api_key

    def start(**settings) -> Iterator[Chain]:
        configure(audit_checkpoint_every=str(EVERY), **settings)
        with session_scope() as db:
            key, token = create_api_key(db, "auditor")
            tenant_id = key.tenant_id
        # No in-process worker: its upkeep would sign checkpoints of its own meanwhile.
        with TestClient(create_app(run_worker=False)) as client:
            yield Chain(Api(client, token), tenant_id)

    if request.param == "postgres":
        with fresh_postgres_database() as url:
            yield from start(database_url=url)
    else:
        yield from start()


def test_incremental_verification_rehashes_only_after_the_checkpoint(chain):
    chain.append(10)
    first = chain.verify()
    assert first == {"valid": True, "checked": 10, "first_invalid_seq": None,
                     "anchor_matches": None, "full": False, "verified_from_seq": 0,
                     "checkpoint_mismatch_seq": None}
    assert chain.checkpoints() == [(10, 10)]  # signed at the end: 10 events past the genesis

    chain.append(3)
    chain.append(2, tenant_id=None)  # not this tenant's: verified, not counted as checked
    second = chain.verify()
    assert second["valid"] and second["verified_from_seq"] == 10 and second["checked"] == 13
    assert chain.checkpoints() == [(10, 10), (15, 15)]  # 5 past the last one: a new one
    assert chain.verify()["verified_from_seq"] == 15
    chain.append(1)
    assert chain.verify()["verified_from_seq"] == 15  # 1 event past it: no new checkpoint
    assert chain.checkpoints() == [(10, 10), (15, 15)]

    full = chain.verify(full="true")
    assert full == {"valid": True, "checked": 14, "first_invalid_seq": None,
                    "anchor_matches": None, "full": True, "verified_from_seq": 0,
                    "checkpoint_mismatch_seq": None}
    other = chain.api.new_tenant()
    assert other.get("/v1/audit/verify").json()["checked"] == 0


def test_a_change_after_the_checkpoint_is_found_incrementally(chain):
    chain.append(10)
    assert chain.verify()["valid"]
    chain.append(3)
    chain.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 12")
    verdict = chain.verify()
    assert verdict == {"valid": False, "checked": 11, "first_invalid_seq": 12,
                       "anchor_matches": None, "full": False, "verified_from_seq": 10,
                       "checkpoint_mismatch_seq": None}
    assert chain.checkpoints() == [(10, 10)]  # nothing is signed over a broken chain


def test_a_rewrite_before_the_checkpoint_with_recomputed_hashes_is_found(chain):
    chain.append(10)
    chain.verify()
    chain.append(6)
    chain.verify()
    assert chain.checkpoints() == [(10, 10), (16, 16)]

    rewrite_audit_history(13, {"i": 999})  # between the two checkpoints
    assert chain.verify(full="true")["checkpoint_mismatch_seq"] == 16
    verdict = chain.verify()
    assert verdict == {"valid": False, "checked": 10, "first_invalid_seq": None,
                       "anchor_matches": None, "full": False, "verified_from_seq": 10,
                       "checkpoint_mismatch_seq": 16}  # the chain itself links up again

    rewrite_audit_history(3, {"i": -1})  # before both
    for verdict in (chain.verify(), chain.verify(full="true")):
        assert verdict["valid"] is False and verdict["checkpoint_mismatch_seq"] == 10
        assert verdict["verified_from_seq"] == 0 and verdict["checked"] == 0
        assert verdict["first_invalid_seq"] is None
    assert len(chain.checkpoints()) == 2


def test_a_change_in_place_before_the_checkpoint_is_found_only_by_a_full_check(chain):
    chain.append(10)
    chain.verify()
    chain.execute("UPDATE audit_events SET data = :data WHERE seq = 4",
                  data=json.dumps({"i": 3, "note": "edited"}))
    # The documented limitation: events up to the checkpoint are trusted to have verified
    # when it was signed, and the edited event kept its stored hash, so the checkpoint holds.
    incremental = chain.verify()
    assert incremental["valid"] is True and incremental["verified_from_seq"] == 10
    full = chain.verify(full="true")
    assert full == {"valid": False, "checked": 3, "first_invalid_seq": 4,
                    "anchor_matches": None, "full": True, "verified_from_seq": 0,
                    "checkpoint_mismatch_seq": None}


def test_an_event_removed_before_the_checkpoint_is_found_by_its_count(chain):
    chain.append(10)
    chain.verify()
    chain.execute("DELETE FROM audit_events WHERE seq = 4")
    verdict = chain.verify()
    assert verdict["valid"] is False and verdict["checkpoint_mismatch_seq"] == 10
    assert verdict["verified_from_seq"] == 0 and verdict["first_invalid_seq"] == 5


def test_a_forged_checkpoint_is_not_trusted(chain):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from app.audit.tables import AuditCheckpoint, AuditEvent
    from app.audit.verification import checkpoint_payload
    from app.core.db import session_scope
    from app.deletion_requests import receipts

    chain.append(10)
    chain.verify()
    chain.append(5)
    chain.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 12")
    with session_scope() as db:
        seq, hash_ = db.execute(select(AuditEvent.seq, AuditEvent.hash)
                                .order_by(AuditEvent.seq.desc()).limit(1)).one()
        at = datetime.now(UTC)
        stranger = Ed25519PrivateKey.generate()  # someone else's key
        signed_elsewhere = base64.b64encode(stranger.sign(receipts.canonical(
            checkpoint_payload(seq, hash_, 15, at)))).decode()
        # Checkpoints past the edited event, whose hashes match: trusted, they would hide it.
        db.add_all([
            AuditCheckpoint(seq=seq, hash=hash_, count=15, created_at=at,
                            key_id="0" * 16, signature=base64.b64encode(b"x" * 64).decode()),
            AuditCheckpoint(seq=seq, hash=hash_, count=15, created_at=at,
                            key_id=receipts.key_id(stranger.public_key()),
                            signature=signed_elsewhere),
            # and a checkpoint whose event does not have its hash, signed by nobody
            AuditCheckpoint(seq=11, hash="f" * 64, count=11, created_at=at, key_id="0" * 16,
                            signature=signed_elsewhere)])
    verdict = chain.verify()
    assert verdict["valid"] is False and verdict["first_invalid_seq"] == 12
    assert verdict["verified_from_seq"] == 10 and verdict["checkpoint_mismatch_seq"] is None

    chain.execute("UPDATE audit_events SET actor = 'key_test' WHERE seq = 12")
    assert chain.verify()["valid"] is True
    with session_scope() as db:  # the genuine one it then signed is trusted next time
        newest = db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc())).first()
        assert newest.key_id == receipts.key_id(receipts.signing_key().public_key())
        assert db.scalar(select(func.count()).select_from(AuditCheckpoint)) == 5
    assert chain.verify()["verified_from_seq"] == 15


def test_a_checkpoint_of_a_replaced_key_is_skipped(chain):
    from app.audit.tables import AuditCheckpoint
    from app.core.config import get_settings
    from app.core.db import session_scope
    from app.deletion_requests import receipts

    chain.append(10)
    chain.verify()
    get_settings().resolved_receipt_key_file.unlink()
    receipts.signing_key.cache_clear()  # a new key on next use
    assert chain.verify()["verified_from_seq"] == 0  # the old key's checkpoint: untrusted
    with session_scope() as db:
        assert db.scalar(select(func.count()).select_from(AuditCheckpoint)) == 2
    assert chain.verify()["verified_from_seq"] == 10


def test_the_upkeep_extends_the_checkpoints_a_stretch_at_a_time(chain):
    from app.audit.tables import AuditCheckpoint
    from app.audit.verification import extend_checkpoints
    from app.core.db import new_session, session_scope
    from app.deletion_requests import receipts

    chain.append(12)
    with new_session() as db:
        assert extend_checkpoints(db, max_events=7) is None  # no key yet: none is made here
    receipts.signing_key()  # the API makes it on first use
    with new_session() as db:
        assert extend_checkpoints(db, max_events=7).valid
    assert chain.checkpoints() == [(7, 7)]
    with new_session() as db:
        extend_checkpoints(db, max_events=7)  # the rest: 5 events, signed
        extend_checkpoints(db, max_events=7)  # nothing new: nothing signed
    assert chain.checkpoints() == [(7, 7), (12, 12)]
    assert chain.verify()["verified_from_seq"] == 12
    with session_scope() as db:
        db.execute(delete(AuditCheckpoint))
    chain.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    with new_session() as db:
        check = extend_checkpoints(db)
        assert not check.valid and check.first_invalid_seq == 3
    assert chain.checkpoints() == []


def _reference_event_hash(event) -> str:
    """event_hash as it was before the faster encoder: the format existing chains are in."""
    content = {
        "prev_hash": event.prev_hash,
        "at": event.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "tenant_id": event.tenant_id,
        "actor": event.actor,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "data": event.data,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


AWKWARD_DATA = [
    {}, {"z": 1, "a": 2, "m": {"y": [3, {"b": None, "a": False}]}},
    {"text": "naïve – “quotes” \\ / \n \t \u2028 😀", "ключ": "значение"},
    {"floats": [0.1, 1e16, 1e-7, -0.0, 123456789.123456789, 2.5e-300]},
    {"big": 2**70, "neg": -(2**63), "zero": 0}, {"list": [[], {}, [[]]], "empty": ""},
]


def test_the_event_hash_format_is_unchanged():
    from types import SimpleNamespace

    from app.audit.service import event_hash

    moments = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 30, 23, 59, 59, 999999,
                                                          tzinfo=UTC),
               datetime(1999, 3, 4, 5, 6, 7, 890, tzinfo=timezone(timedelta(hours=-5)))]
    for data in AWKWARD_DATA:
        for at in moments:
            for tenant_id, actor in ((None, None), ("ten_x", "key_é")):
                event = SimpleNamespace(prev_hash="a" * 64, at=at, tenant_id=tenant_id,
                                        actor=actor, action="a.b", subject_type="s",
                                        subject_id="s1", data=data)
                assert event_hash(event) == _reference_event_hash(event)


def test_the_streamed_rehash_agrees_with_event_hash(chain):
    """On PostgreSQL the stream reads ``at`` and ``data`` as text: the same hashes."""
    from app.audit import service
    from app.audit.tables import AuditEvent, AuditHead
    from app.core.db import new_session, session_scope

    with session_scope() as db:
        for i, data in enumerate(AWKWARD_DATA):
            service.record(db, "test.awkward", "thing", str(i), tenant_id=None, data=data)
    moments = [datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC),  # printed with .000000
               datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
               datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    with session_scope() as db:  # re-chained at awkward moments too
        prev = service.GENESIS
        for i, event in enumerate(db.scalars(select(AuditEvent).order_by(AuditEvent.seq))):
            event.at, event.prev_hash = moments[i % len(moments)], prev
            event.hash = prev = service.event_hash(event)
        db.get(AuditHead, 1).last_hash = prev
    with new_session() as db:
        if db.get_bind().dialect.name == "postgresql":  # the server prints UTC whatever its zone
            db.execute(text("SET TIME ZONE 'Asia/Kolkata'"))
        events = db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        assert all(service.event_hash(e) == _reference_event_hash(e) == e.hash for e in events)
        done = service.rehash(db)
        assert done.broken_seq is None and done.count == len(events) == len(AWKWARD_DATA)
        assert done.last_hash == events[-1].hash
    assert chain.verify(full="true")["valid"] is True
