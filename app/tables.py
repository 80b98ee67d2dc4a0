"""Every table, imported so the metadata is complete (Alembic and tests use it)."""

from app.audit.tables import AuditEvent, AuditHead
from app.core.db import Base
from app.core.idempotency_table import IdempotencyRecord
from app.datasets.tables import Dataset, Sample
from app.deletion_requests.tables import DeletionRequest
from app.jobs.tables import Job
from app.models.tables import ForgottenSample, Model, ModelVersion
from app.tenants.tables import ApiKey, Tenant

__all__ = ["ApiKey", "AuditEvent", "AuditHead", "Base", "Dataset", "DeletionRequest",
           "ForgottenSample", "IdempotencyRecord", "Job", "Model", "ModelVersion", "Sample",
           "Tenant"]
