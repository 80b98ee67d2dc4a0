"""What the engine offers: unlearning methods and architectures, with their JSON Schemas."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.core.auth import current_principal
from app.core.config import get_settings
from app.core.openapi import AUTHENTICATED
from worker.engine.architectures import ARCHITECTURES
from worker.engine.gate_thresholds import GateThresholds
from worker.engine.methods import METHODS

router = APIRouter(prefix="/v1", tags=["catalogue"], dependencies=[Depends(current_principal)],
                   responses=AUTHENTICATED)


class MethodOut(BaseModel):
    name: str
    summary: str
    reference: str
    params_schema: dict[str, Any]
    default_for: list[Literal["samples", "classes"]] = Field(
        description="The kinds of request whose default chain (for a request naming no "
                    "method) starts with this method.")


class ArchitectureOut(BaseModel):
    name: str
    summary: str
    config_schema: dict[str, Any]


@router.get("/methods", response_model=list[MethodOut])
def list_methods():
    settings = get_settings()
    defaults = {"samples": settings.default_chain_samples[0],
                "classes": settings.default_chain_classes[0]}
    return [MethodOut(name=name, summary=cls.summary, reference=cls.reference,
                      params_schema=cls.params_schema(),
                      default_for=[kind for kind, default in defaults.items() if default == name])
            for name, cls in METHODS]


@router.get("/architectures", response_model=list[ArchitectureOut])
def list_architectures():
    return [ArchitectureOut(name=name, summary=arch.summary,
                            config_schema=arch.config_model.model_json_schema())
            for name, arch in ARCHITECTURES]


class DefaultChains(BaseModel):
    samples: list[str]
    classes: list[str]


class GateOut(BaseModel):
    thresholds: GateThresholds
    fallback: list[str] = Field(description="Tried after a named method that fails the gate, "
                                            "when the request names no fallback.")
    default_chains: DefaultChains = Field(description="Tried in turn by a request that names "
                                                      "no method, by its kind.")
    thresholds_schema: dict[str, Any]


@router.get("/acceptance-gate", response_model=GateOut,
            summary="What every candidate version must meet, and the default fallback chain")
def acceptance_gate():
    settings = get_settings()
    return GateOut(thresholds=settings.gate, fallback=settings.fallback_methods,
                   default_chains=DefaultChains(samples=settings.default_chain_samples,
                                                classes=settings.default_chain_classes),
                   thresholds_schema=GateThresholds.model_json_schema())
