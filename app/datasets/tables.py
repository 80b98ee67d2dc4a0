from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))  # of the uploaded file
    upload_blob: Mapped[str] = mapped_column(String(64))
    arrays_blob: Mapped[str] = mapped_column(String(64))  # decoded arrays (safetensors)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    num_classes: Mapped[int]
    classes: Mapped[list]
    input_shape: Mapped[list]
    num_train: Mapped[int]
    num_test: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sample(Base):
    """A training sample; ``row`` is its index in the dataset's decoded arrays."""

    __tablename__ = "samples"
    __table_args__ = (
        Index("ix_samples_dataset_sample_id", "dataset_id", "sample_id", unique=True),
        Index("ix_samples_dataset_label", "dataset_id", "label", "row"),
        Index("ix_samples_dataset_subject", "dataset_id", "subject"),
    )

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            primary_key=True)
    row: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(1024))
    label: Mapped[int]
    subject: Mapped[str | None] = mapped_column(String(200))
    deleted: Mapped[bool] = mapped_column(default=False)  # some model forgot it
    erased: Mapped[bool] = mapped_column(default=False)  # its bytes left the store
