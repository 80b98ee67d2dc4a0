from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(100))
    architecture_config: Mapped[dict]
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    training_config: Mapped[dict]
    latest_version: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int]
    parent_version: Mapped[int | None]
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(String(40))
    metrics: Mapped[dict | None]
    forgotten_sample_ids: Mapped[list]  # the forget set that made this version
    # Method state cached with this version (e.g. projected-gradient's matrices): name -> blob.
    artifacts: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A later version forgot data this one still carries: no more downloads, blobs purged.
    withdrawn_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]


class ForgottenSample(Base):
    """A training row a model no longer carries, and the job that removed it."""

    __tablename__ = "forgotten_samples"

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    row: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40))


class ModelAlias(Base):
    """A name pointing at one of a model's versions (``production`` -> 3), as MLflow has them.
    When the version is withdrawn because a newer one forgot data, the alias moves to it."""

    __tablename__ = "model_aliases"

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelTag(Base):
    """A key-value label on a model (``version`` 0) or on one of its versions (1, 2, …)."""

    __tablename__ = "model_tags"
    __table_args__ = (
        UniqueConstraint("model_id", "version", "key"),
        Index("ix_model_tags_key_value", "key", "value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          index=True)
    version: Mapped[int] = mapped_column(default=0)  # 0: the model's own tag
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(String(1000))


class TokenizedInputs(Base):
    """A text dataset blob tokenized by one tokenizer: the safetensors blob of its token ids
    and attention masks (``worker/engine/data/tokenized.py``), made once, read by every job.
    Keyed by the dataset blob (content addressed: an erasure makes a new one, and the old
    key's cache is deleted with it) and the tokenizer's digest."""

    __tablename__ = "tokenized_inputs"

    source_blob: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokenizer_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    blob_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
