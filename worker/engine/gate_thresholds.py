"""What a candidate version must meet to be published (see ``worker.engine.gate``).

Kept free of torch so the settings, which give the defaults, stay cheap to import.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GateThresholds(BaseModel):
    """What a candidate version must meet to be published; settings give the defaults and a
    deletion request may override any of them."""

    model_config = ConfigDict(extra="forbid")

    enforce: bool = Field(
        True, description="Refuse a failing candidate (false: record the verdict and publish).")
    max_utility_drop: float = Field(
        2.0, ge=0, le=100,
        description="Points test and retain accuracy may fall below the base version's.")
    class_forget_max: float = Field(
        5.0, ge=0, le=100, description="Accuracy (percent) a forgotten class may keep.")
    forget_margin_above: float = Field(
        3.0, ge=0, le=100,
        description="Random forgetting: points forget accuracy may stay above held-out "
                    "accuracy (more: the samples are still remembered).")
    forget_margin_below: float = Field(
        8.0, ge=0, le=100,
        description="Random forgetting: points forget accuracy may fall below held-out "
                    "accuracy (more: over-forgotten; a retrained model scores its unseen "
                    "samples a few points under its test accuracy).")
    mia_margin: float = Field(
        10.0, ge=0, le=100,
        description="Random forgetting: points the membership attack's non-member share on "
                    "D_f may differ from its share on held-out rows.")
    z: float = Field(
        2.0, ge=0, le=10,
        description="Standard errors every margin is widened to when the samples are small.")
    sample_rows: int = Field(
        2000, ge=50, le=100_000, description="Rows of each set the gate evaluates at most.")

    def overridden(self, overrides: dict | None) -> GateThresholds:
        """These thresholds with a request's overrides applied field by field (validated:
        a bad value raises pydantic's ValidationError)."""
        return GateThresholds.model_validate(self.model_dump() | (overrides or {}))
