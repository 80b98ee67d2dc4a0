"""Signed receipts: evidence of what a completed deletion request did, checkable offline.

A receipt is ``{"receipt": payload, "signature", "algorithm": "Ed25519", "key_id"}``; the
signature covers the payload's canonical JSON (keys sorted, no spaces, UTF-8). Anyone with
the public key from ``GET /v1/keys/receipt`` can check it (``lethe receipt verify``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

import app
from app.audit import service as audit
from app.core.config import get_settings
from app.core.errors import Problem
from app.deletion_requests.tables import DeletionRequest
from app.jobs.tables import Job
from app.models.tables import ModelVersion

ALGORITHM = "Ed25519"


def canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def ids_digest(sample_ids: list[str]) -> str:
    """sha256 of the sorted sample ids joined by newlines."""
    return hashlib.sha256("\n".join(sorted(sample_ids)).encode("utf-8")).hexdigest()


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    try:  # O_EXCL: of two processes starting at once, one key wins and both use it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


@lru_cache
def signing_key() -> Ed25519PrivateKey:
    path = get_settings().resolved_receipt_key_file
    if not path.exists():
        _create_key(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise RuntimeError(f"{path} is not an Ed25519 private key")
    return key


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


def public_key_document() -> dict[str, str]:
    public = signing_key().public_key()
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return {"algorithm": ALGORITHM, "key_id": key_id(public), "public_key_pem": pem,
            "public_key": base64.b64encode(raw_public_key(public)).decode()}


def _version(db: Session, model_id: str, version: int | None) -> dict[str, Any] | None:
    row = db.scalars(select(ModelVersion).where(ModelVersion.model_id == model_id,
                                                ModelVersion.version == version)).first()
    return {"version": row.version, "sha256": row.sha256} if row else None


def receipt_payload(db: Session, request: DeletionRequest) -> dict[str, Any]:
    if request.status != "completed":
        raise Problem(409, f"deletion request {request.id!r} is {request.status}; receipts "
                      "are issued once it is completed", slug="request-not-completed")
    job = db.get(Job, request.job_id)
    metrics = dict(job.metrics or {})
    return {
        "receipt_version": 2,
        "request_id": request.id,
        "model_id": request.model_id,
        "subject": request.subject,
        "reason": request.reason,
        "forgotten_samples": {"count": len(request.sample_ids),
                              "sha256": ids_digest(request.sample_ids)},
        "classes": request.classes,
        "version_before": _version(db, request.model_id, job.base_version),
        "version_after": _version(db, request.model_id, job.result_version),
        "method": job.method,
        "params": job.params,
        # The method that made the published version (a fallback when the requested one failed
        # the acceptance gate), the gate's verdict and figures, and every candidate tried.
        "method_used": metrics.pop("method", job.method),
        "acceptance": metrics.pop("gate", None),
        "candidates": [{"method": c["method"], "verdict": c["verdict"], "error": c["error"]}
                       for c in metrics.pop("candidates", [])],
        "seed": job.params.get("seed"),
        "job_id": job.id,
        "lethe_version": app.__version__,
        "hardware": metrics.pop("hardware", None),
        "metrics": metrics,
        "received_at": request.received_at.isoformat(),
        "deadline": request.deadline.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "completed_at": request.completed_at.isoformat() if request.completed_at else None,
        # The audit chain's head when this receipt was issued: an auditor who keeps it can
        # prove a later rewrite of the trail (GET /v1/audit/verify?anchor_seq=&anchor_hash=).
        "audit_head": audit.chain_head(db),
    }


def sign(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` under ``receipt`` with the service's signature of its canonical JSON (the
    envelope ``lethe receipt verify`` checks)."""
    key = signing_key()
    return {"receipt": payload, "algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(canonical(payload))).decode()}


def signed_receipt(db: Session, request: DeletionRequest) -> dict[str, Any]:
    return sign(receipt_payload(db, request))


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from PEM, or from the JSON document ``GET /v1/keys/receipt`` serves."""
    if text.lstrip().startswith("{"):
        text = json.loads(text)["public_key_pem"]
    key = serialization.load_pem_public_key(text.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def verify_receipt(document: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    if document.get("algorithm") != ALGORITHM:
        return False
    try:
        signature = base64.b64decode(document["signature"], validate=True)
        public_key.verify(signature, canonical(document["receipt"]))
    except (InvalidSignature, KeyError, ValueError):
        return False
    return True

