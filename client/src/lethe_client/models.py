"""Typed models of what the Lethe API serves (generated: do not edit).

Made by ``scripts/generate_client_models.py`` from the service's OpenAPI document; a test
fails when this file no longer matches it.
"""
# ruff: noqa: E501

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    version: int = Field(description='The version the alias names.')


class Alias(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_id: str
    alias: str
    version: int
    updated_at: datetime


class ApiKeyCreated(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    name: str
    tenant_id: str
    created_at: datetime
    revoked_at: datetime | None
    current: bool = Field(description='Whether this request was made with it.')
    token: str = Field(description='The bearer token, shown only here.')


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    name: str
    tenant_id: str
    created_at: datetime
    revoked_at: datetime | None
    current: bool = Field(description='Whether this request was made with it.')


class Architecture(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    summary: str
    config_schema: dict[str, Any]


class Attempt(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    number: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    seq: int
    at: datetime
    actor: str | None
    action: str
    subject_type: str
    subject_id: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


class ChainVerdict(BaseModel):
    """Incremental by default: only the events after the latest signed checkpoint that still holds are re-hashed; those up to it are trusted to have verified when it was signed. An event before it changed in place (its stored hash kept) is found only by ``full=true``; a rewrite that recomputed the hashes is found either way (the checkpoint no longer matches)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    valid: bool
    checked: int = Field(description="This tenant's events the verdict covers (the chain holds every tenant's; their volume is not shown): those up to `verified_from_seq`, verified when that checkpoint was signed, and those re-hashed now. None from the first event that does not match on, nor after the last signed checkpoint that holds when a later one does not.")
    first_invalid_seq: int | None = Field(description="The first event that does not match, when it is this tenant's.")
    anchor_matches: bool | None = Field(None, description="Whether the event the given anchor names still has the anchor's hash (None: no anchor given). False means the trail was rewritten after the anchor was signed, even if every hash was recomputed.")
    full: bool = Field(False, description='Whether every event was re-hashed from the genesis (`full=true`), checkpoints not relied on.')
    verified_from_seq: int = Field(0, description='Re-hashing started after this event: the latest signed checkpoint that still holds (0: the genesis, always with `full=true`). Events up to it are trusted to have verified when it was signed: one changed in place since, its stored hash kept, is found only by `full=true`.')
    checkpoint_mismatch_seq: int | None = Field(None, description='The earliest signed checkpoint whose event no longer has the checkpointed hash (or is gone, or the count of events up to it changed): the trail was rewritten after it was signed, even if every hash was recomputed, and `valid` is false. A checkpoint whose signature does not verify is not trusted, only skipped.')


class Dataset(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    name: str
    format: str
    num_classes: int
    classes: list[str]
    input_shape: list[int]
    num_train: int
    num_test: int
    sha256: str
    size_bytes: int
    created_at: datetime


class DefaultChains(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    samples: list[str]
    classes: list[str]


class DeletionRequestIn(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    sample_ids: list[str] | None = Field(None, description='Training samples to forget.')
    classes: list[int] | None = Field(None, description='Whole classes to forget, by label.')
    method: str | None = Field(None, description="A name from GET /v1/methods. Default: the service's chain for the kind of request, its first method with the rest as the fallback (samples: projected-gradient, feature-constraint, retrain; whole classes: projected-gradient, deepclean, retrain; GET /v1/acceptance-gate lists the service's). params need a method named.")
    params: dict[str, Any] = Field(default_factory=dict, description="The method's parameters (its params_schema).")
    fallback: list[FallbackStep] | None = Field(None, description="Methods tried in turn, each a name or {method, params}, when a candidate fails the acceptance gate. Default: the service's chain, ending in retrain; [] for none (a failing candidate then fails the job).")
    gate: dict[str, Any] | None = Field(None, description="Overrides of the acceptance gate's thresholds, field by field (enforce, max_utility_drop, class_forget_max, forget_margin_above, forget_margin_below, mia_margin, z, sample_rows); see the README.")
    subject: str | None = Field(None, description="Who asked. Alone, without sample_ids or classes, it forgets all of that subject's samples.")
    reason: str | None = None


class DeletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    model_id: str
    status: str
    job_id: str | None
    method: str
    params: dict[str, Any]
    fallback: list[dict[str, Any]] | None
    gate: dict[str, Any] | None
    num_samples: int
    classes: list[int] | None
    subject: str | None
    reason: str | None
    attempts: int
    error: dict[str, Any] | None
    received_at: datetime
    deadline: datetime
    overdue: bool
    completed_at: datetime | None
    version_before: int | None
    version_after: int | None
    job: Job | None = None


class Delivery(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str = Field(description='The webhook-id header of every attempt.')
    webhook_id: str
    event_type: str
    status: Literal['pending', 'delivered', 'failed']
    attempts: int = Field(description='Attempts in the current round (a resend starts one).')
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]
    attempt_log: list[Attempt]


class FallbackStep(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    method: str = Field(description='A name from GET /v1/methods.')
    params: dict[str, Any] = Field(default_factory=dict, description="The method's parameters (its params_schema).")


class FieldError(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    field: str | None = Field(description='The offending field (dotted path), if one.')
    message: str


class ForgottenSample(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str


class Gate(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    thresholds: GateThresholds
    fallback: list[str] = Field(description='Tried after a named method that fails the gate, when the request names no fallback.')
    default_chains: DefaultChains = Field(description='Tried in turn by a request that names no method, by its kind.')
    thresholds_schema: dict[str, Any]


class GateThresholds(BaseModel):
    """What a candidate version must meet to be published; settings give the defaults and a deletion request may override any of them."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    enforce: bool = Field(True, description='Refuse a failing candidate (false: record the verdict and publish).')
    max_utility_drop: float = Field(2.0, description="Points test and retain accuracy may fall below the base version's.")
    class_forget_max: float = Field(5.0, description='Accuracy (percent) a forgotten class may keep.')
    forget_margin_above: float = Field(3.0, description='Random forgetting: points forget accuracy may stay above held-out accuracy (more: the samples are still remembered).')
    forget_margin_below: float = Field(8.0, description='Random forgetting: points forget accuracy may fall below held-out accuracy (more: over-forgotten; a retrained model scores its unseen samples a few points under its test accuracy).')
    mia_margin: float = Field(10.0, description="Random forgetting: points the membership attack's non-member share on D_f may differ from its share on held-out rows.")
    z: float = Field(2.0, description='Standard errors every margin is widened to when the samples are small.')
    sample_rows: int = Field(2000, description='Rows of each set the gate evaluates at most.')


class Job(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    status: Literal['queued', 'running', 'succeeded', 'failed', 'cancelled']
    progress: float
    phase: str | None
    model_id: str
    method: str
    params: dict[str, Any]
    fallback: list[dict[str, Any]] | None
    gate: dict[str, Any] | None
    num_forget_samples: int
    forget_classes: list[int] | None
    base_version: int | None
    result_version: int | None
    metrics: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    summary: str
    reference: str
    params_schema: dict[str, Any]
    default_for: list[Literal['samples', 'classes']] = Field(description='The kinds of request whose default chain (for a request naming no method) starts with this method.')


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    name: str
    architecture: str
    architecture_config: dict[str, Any]
    dataset_id: str
    training_config: dict[str, Any]
    latest_version: int
    created_at: datetime
    tags: dict[str, str] = Field(default_factory=dict, description="The model's tags.")
    aliases: dict[str, int] = Field(default_factory=dict, description='Alias -> the version it names.')


class Problem(BaseModel):
    """An RFC 9457 problem; some carry more members (e.g. ``unknown_sample_ids``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    type: str = Field(description='A URI naming the kind of problem.')
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description='The path of the request.')
    errors: list[FieldError] | None = None


class PublicKey(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    algorithm: str
    key_id: str
    public_key_pem: str
    public_key: str = Field(description='Base64 of the raw 32-byte public key.')


class Sample(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    label: int
    deleted: bool
    erased: bool
    subject: str | None = None


class SignedDocument(BaseModel):
    """A payload signed with the service's Ed25519 key: a receipt, or a signed audit head. The signature covers ``receipt``'s canonical JSON (sorted keys, no whitespace, UTF-8)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    receipt: dict[str, Any]
    algorithm: str = Field(description='Ed25519.')
    key_id: str = Field(description="The first 16 hex digits of the public key's sha256.")
    signature: str = Field(description='Base64 of the signature.')


class TagIn(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    value: str


class Version(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    version: int
    parent_version: int | None
    sha256: str
    size_bytes: int
    job_id: str | None
    created_at: datetime
    metrics: dict[str, Any] | None
    forgotten_samples: int = Field(description='How many samples the job that made this version forgot; GET …/forgotten-samples lists them.')
    withdrawn_at: datetime | None
    tags: dict[str, str] = Field(default_factory=dict, description="The version's tags.")
    aliases: list[str] = Field(default_factory=list, description='The aliases naming it (`latest` included).')


class WebhookCreated(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime
    secret: str = Field(description="The signing secret (whsec_…), shown only here: verify each delivery's webhook-signature with it.")


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    url: str = Field(description='Where to POST the events (http or https).')
    events: list[str] = Field(description='Event types (see docs/api.md), or ["*"] for all of them.')
    description: str | None = None


class Webhook(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime


AliasIn.model_rebuild()
Alias.model_rebuild()
ApiKeyCreated.model_rebuild()
ApiKeyIn.model_rebuild()
ApiKey.model_rebuild()
Architecture.model_rebuild()
Attempt.model_rebuild()
AuditEvent.model_rebuild()
ChainVerdict.model_rebuild()
Dataset.model_rebuild()
DefaultChains.model_rebuild()
DeletionRequestIn.model_rebuild()
DeletionRequest.model_rebuild()
Delivery.model_rebuild()
FallbackStep.model_rebuild()
FieldError.model_rebuild()
ForgottenSample.model_rebuild()
Gate.model_rebuild()
GateThresholds.model_rebuild()
Job.model_rebuild()
Method.model_rebuild()
Model.model_rebuild()
Problem.model_rebuild()
PublicKey.model_rebuild()
Sample.model_rebuild()
SignedDocument.model_rebuild()
TagIn.model_rebuild()
Version.model_rebuild()
WebhookCreated.model_rebuild()
WebhookIn.model_rebuild()
Webhook.model_rebuild()

__all__ = ['AliasIn', 'Alias', 'ApiKeyCreated', 'ApiKeyIn', 'ApiKey', 'Architecture', 'Attempt', 'AuditEvent', 'ChainVerdict', 'Dataset', 'DefaultChains', 'DeletionRequestIn', 'DeletionRequest', 'Delivery', 'FallbackStep', 'FieldError', 'ForgottenSample', 'Gate', 'GateThresholds', 'Job', 'Method', 'Model', 'Problem', 'PublicKey', 'Sample', 'SignedDocument', 'TagIn', 'Version', 'WebhookCreated', 'WebhookIn', 'Webhook']
