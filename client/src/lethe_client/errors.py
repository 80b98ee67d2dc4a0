"""What the client raises. Every error the service answered carries its RFC 9457 problem."""

from __future__ import annotations

from typing import Any

from lethe_client.models import DeletionRequest, Job, Problem


class LetheError(Exception):
    """The base of everything this client raises."""


class ConfigurationError(LetheError):
    """The client was not told where the service is or which token to use."""


class ConnectionFailed(LetheError):
    """The service could not be reached (or kept dropping the connection) after every retry."""


class ProblemError(LetheError):
    """An error described by an RFC 9457 problem (``.problem``)."""

    problem: Problem | None

    @property
    def status(self) -> int | None:
        return self.problem.status if self.problem else None

    @property
    def detail(self) -> str | None:
        return self.problem.detail if self.problem else None


class ApiError(ProblemError):
    """The service answered with an error status; ``.problem`` is its problem document."""

    def __init__(self, problem: Problem, *, method: str = "", url: str = "",
                 headers: dict[str, str] | None = None):
        self.problem = problem
        self.method, self.url = method, url
        self.headers = headers or {}
        super().__init__(f"{problem.status} {problem.title}: {problem.detail}")


class BadRequest(ApiError):
    """400: the body could not be read."""


class Unauthorized(ApiError):
    """401: no token, or one that is unknown or revoked."""


class NotFound(ApiError):
    """404: no such resource (or another tenant's)."""


class Conflict(ApiError):
    """409: the resource is not in a state that allows this."""


class Gone(ApiError):
    """410: the model version was withdrawn (it still carries data a later version forgot)."""


class PayloadTooLarge(ApiError):
    """413: the body is larger than the service accepts."""


class RangeNotSatisfiable(ApiError):
    """416: the Range asked for bytes the checkpoint does not have."""


class ValidationFailed(ApiError):
    """422: a field is invalid; ``.problem.errors`` names each one."""


class RateLimited(ApiError):
    """429, after every retry."""


class ServerError(ApiError):
    """5xx (503 after every retry)."""


BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 410: Gone,
    413: PayloadTooLarge, 416: RangeNotSatisfiable, 422: ValidationFailed, 429: RateLimited,
}


def api_error(problem: Problem, **context: Any) -> ApiError:
    kind = BY_STATUS.get(problem.status)
    if kind is None:
        kind = ServerError if problem.status >= 500 else ApiError
    return kind(problem, **context)


class JobFailed(ProblemError):
    """A job ended ``failed`` or ``cancelled``; ``.problem`` is its error, ``.job`` the job."""

    def __init__(self, job: Job):
        self.job = job
        self.problem = Problem.model_validate(job.error) if job.error else None
        why = f": {self.problem.detail}" if self.problem else ""
        super().__init__(f"job {job.id} {job.status}{why}")


class DeletionFailed(ProblemError):
    """A deletion request ended ``failed`` or ``rejected``; ``.problem`` is why."""

    def __init__(self, request: DeletionRequest):
        self.request = request
        error = request.error or {}
        defaults = {"type": "about:blank", "status": 500,
                    "title": f"Deletion request {request.status}", "detail": ""}
        self.problem = Problem.model_validate(defaults | error) if error else None
        why = f": {self.problem.detail}" if self.problem and self.problem.detail else ""
        super().__init__(f"deletion request {request.id} {request.status}{why}")


class WaitTimeout(LetheError, TimeoutError):
    """``wait()`` gave up before the job or request finished."""


class ChecksumMismatch(LetheError):
    """A downloaded file's sha256 is not the one the service named (its ETag)."""

    def __init__(self, path: str, expected: str, actual: str):
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(f"{path}: sha256 {actual} != the ETag's {expected}; the partial "
                         "file was deleted")


class Ambiguous(LetheError):
    """A name given where an id is expected matches more than one resource."""


class UnknownName(LetheError, LookupError):
    """A name given where an id is expected matches no resource."""
