"""Unlearning-method registry: one module per method, each registering itself."""

from worker.engine.methods._base import (
    METHODS,
    JobCancelled,
    MethodParams,
    ProgressFn,
    UnlearningData,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)

__all__ = [
    "METHODS",
    "JobCancelled",
    "MethodParams",
    "ProgressFn",
    "UnlearningData",
    "UnlearningMethod",
    "UnlearningOutcome",
    "UnlearningTask",
    "register_method",
]
