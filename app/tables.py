"""Every table, imported so the metadata is complete (Alembic and tests use it)."""

from app.audit.tables import AuditCheckpoint, AuditEvent, AuditHead
from app.core.db import Base
from app.core.idempotency_table import IdempotencyRecord
from app.datasets.tables import Dataset, Sample
from app.deletion_requests.tables import DeletionRequest
from app.jobs.tables import Job
from app.models.tables import ForgottenSample, Model, ModelAlias, ModelTag, ModelVersion
from app.tenants.tables import ApiKey, Tenant
from app.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = ["ApiKey", "AuditCheckpoint", "AuditEvent", "AuditHead", "Base", "Dataset",
           "DeletionRequest", "ForgottenSample", "IdempotencyRecord", "Job", "Model",
           "ModelAlias", "ModelTag", "ModelVersion", "Sample", "Tenant", "WebhookAttempt",
           "WebhookDelivery", "WebhookEndpoint"]
