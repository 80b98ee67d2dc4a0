from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class DatasetOut(BaseModel):
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

    @classmethod
    def of(cls, ds) -> DatasetOut:
        return cls.model_validate(ds, from_attributes=True)


class SampleOut(BaseModel):
    id: str
    label: int
    deleted: bool
    erased: bool
    subject: str | None = None

    @classmethod
    def of(cls, sample) -> SampleOut:
        return cls(id=sample.sample_id, label=sample.label, deleted=sample.deleted,
                   erased=sample.erased, subject=sample.subject)
