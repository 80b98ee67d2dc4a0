"""Python client for Lethe, machine unlearning as a service.

    from lethe_client import Client

    with Client() as lethe:               # LETHE_URL, LETHE_TOKEN
        request = lethe.forget("digits-mlp", classes=[3])
        request.wait()
"""

from lethe_client._version import __version__
from lethe_client.client import (
    Client,
    DeletionRequestHandle,
)
from lethe_client.errors import (
    Ambiguous,
    ApiError,
    BadRequest,
    ChecksumMismatch,
    ConfigurationError,
    Conflict,
    ConnectionFailed,
    DeletionFailed,
    Gone,
    JobFailed,
    LetheError,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    RangeNotSatisfiable,
    RateLimited,
    ServerError,
    Unauthorized,
    UnknownName,
    ValidationFailed,
    WaitTimeout,
)
from lethe_client.webhooks import WebhookVerificationError

__all__ = [
    "Ambiguous", "ApiError", "BadRequest", "ChecksumMismatch", "Client", "ConfigurationError",
    "Conflict", "ConnectionFailed", "DeletionFailed", "DeletionRequestHandle", "Gone",
    "JobFailed", "LetheError", "NotFound", "PayloadTooLarge", "ProblemError",
    "RangeNotSatisfiable", "RateLimited", "ServerError", "Unauthorized", "UnknownName",
    "ValidationFailed", "WaitTimeout", "WebhookVerificationError", "__version__",
]
