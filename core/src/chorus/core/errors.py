"""Errors that become rich gRPC statuses (AIP-193).

Raise a `ChorusError` subclass anywhere in a handler; the server interceptor turns it into
a `google.rpc.Status` with an `ErrorInfo` (reason, domain `chorus.dev`, request id) and,
where it applies, `BadRequest` field violations or `RetryInfo`. Any other exception becomes
INTERNAL with only the request id — never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "chorus.dev"
"""`ErrorInfo.domain` of every Chorus error."""


class ChorusError(Exception):
    """An error with a gRPC status code and an AIP-193 `ErrorInfo.reason`.

    Args:
        message: for people; no secrets.
        reason: UPPER_SNAKE_CASE machine-readable reason; defaults per class.
        metadata: extra `ErrorInfo.metadata` (string → string).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = "UNKNOWN"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        """Extra detail messages besides `ErrorInfo` (overridden by subclasses)."""
        return []

    def to_status(self, request_id: str | None = None) -> status_pb2.Status:
        """This error as a `google.rpc.Status` with `ErrorInfo` first."""
        meta = dict(self.metadata)
        if request_id:
            meta["request_id"] = request_id
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=meta))
        return status_pb2.Status(
            code=self.code.value[0], message=self.message, details=[info, *self.details()]
        )


class InvalidArgument(ChorusError):
    """INVALID_ARGUMENT with `BadRequest` field violations.

    Args:
        violations: `(field path, description)` pairs, e.g. `("spec.max_turns", "must be 1..100")`.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Iterable[tuple[str, str]] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)

    def details(self) -> list[any_pb2.Any]:
        if not self.violations:
            return []
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class Violations:
    """Collects field violations, then raises one `InvalidArgument` with all of them.

    >>> v = Violations()
    >>> v.check(page_size >= 0, "page_size", "must not be negative")
    >>> v.raise_if_any()
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        """Record that `field` is invalid because of `description`."""
        self.items.append((field, description))

    def check(self, ok: bool, field: str, description: str) -> None:
        """Record a violation unless `ok`."""
        if not ok:
            self.items.append((field, description))

    def raise_if_any(self, message: str = "invalid request") -> None:
        """Raise `InvalidArgument` naming every recorded field, if any were recorded."""
        if self.items:
            fields = ", ".join(f for f, _ in self.items)
            raise InvalidArgument(f"{message}: {fields}", self.items)


class OutOfRange(InvalidArgument):
    """OUT_OF_RANGE with `BadRequest` field violations: a value valid in itself but past
    what exists (AIP-193), e.g. a seq after a run's last event."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class NotFound(ChorusError):
    """NOT_FOUND: the resource does not exist or belongs to someone else."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ChorusError):
    """ALREADY_EXISTS."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ChorusError):
    """FAILED_PRECONDITION: the system is not in a state the call needs."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(ChorusError):
    """ABORTED: a concurrency conflict (HTTP 409)."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(ChorusError):
    """PERMISSION_DENIED."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(ChorusError):
    """UNAUTHENTICATED: no or invalid caller identity."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Unavailable(ChorusError):
    """UNAVAILABLE: a dependency (database, upstream model API) cannot be reached; retryable."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(ChorusError):
    """DEADLINE_EXCEEDED."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(ChorusError):
    """UNIMPLEMENTED."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(ChorusError):
    """INTERNAL: a bug; the message must not leak internals."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


class ResourceExhausted(ChorusError):
    """RESOURCE_EXHAUSTED with `RetryInfo` when `retry_after_s` is given.

    Args:
        retry_after_s: seconds after which a retry may succeed.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        if self.retry_after_s is None:
            return []
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_s * 1e9))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return [packed]


class StatusError(ChorusError):
    """A `google.rpc.Status` received in a response (e.g. the end of one watch of
    RunService.WatchRuns) raised as it is: `to_status` returns it unchanged, details
    (ErrorInfo with the request id, BadRequest, RetryInfo) included.

    Args:
        status: the status; its code must not be OK.
    """

    def __init__(self, status: status_pb2.Status) -> None:
        code = status_code_from_rpc(status.code)
        super().__init__(status.message or code.name, reason=code.name)
        self.code = code
        self.status = status

    def to_status(self, request_id: str | None = None) -> status_pb2.Status:
        return self.status


_BY_CODE: dict[grpc.StatusCode, type[ChorusError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        OutOfRange,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        DeadlineExceeded,
        Unimplemented,
        Internal,
        ResourceExhausted,
    )
}
_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def status_code_from_rpc(code: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` of a `google.rpc.Code` number (UNKNOWN when out of range)."""
    return _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)


def rpc_code(code: grpc.StatusCode) -> code_pb2.Code.ValueType:
    """The `google.rpc.Code` number of a `grpc.StatusCode`."""
    return code.value[0]


def error_for_code(
    code: grpc.StatusCode, message: str, *, reason: str | None = None
) -> ChorusError:
    """A `ChorusError` of the class matching `code` (plain `ChorusError` with that code otherwise)."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message, reason=reason)
    err = ChorusError(message, reason=reason or code.name)
    err.code = code
    return err


STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""Trailing metadata of a rich error status (google.rpc.Status, AIP-193), which Chorus
servers attach to every error they answer (`chorus.core.interceptors`)."""

SERVER_GONE_CODES = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED))
"""Codes of a call whose server went away or is shutting down (`server_went_away`)."""


def server_went_away(err: grpc.aio.AioRpcError) -> bool:
    """Whether a call failed because its server went away or is shutting down, so the same
    call may be made again on another replica: UNAVAILABLE, CANCELLED (a caller's own
    cancel is not an error it sees), or an INTERNAL that gRPC itself raised for a broken
    HTTP/2 stream (an RST_STREAM, an end of stream without a status) — recognised by its
    missing `grpc-status-details-bin`, which every error a Chorus server answers carries.
    Every other code (NOT_FOUND, PERMISSION_DENIED, a server's own INTERNAL, …) is final."""
    code = err.code()
    if code in SERVER_GONE_CODES:
        return True
    return code == grpc.StatusCode.INTERNAL and not any(
        key == STATUS_DETAILS_KEY for key, _ in err.trailing_metadata() or ()
    )


def from_rpc_error(err: grpc.aio.AioRpcError) -> ChorusError:
    """Re-raise a downstream call's failure as a `ChorusError` keeping its code, reason,
    `ErrorInfo.metadata` (e.g. INPUT_NOT_PENDING's `pending_input_id`) and `BadRequest`
    field violations.

    Used when a service passes another service's error on to its own caller.
    """
    from grpc_status import rpc_status

    reason = None
    metadata: dict[str, str] = {}
    status = rpc_status.from_call(err)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata = {k: v for k, v in info.metadata.items() if k != "request_id"}
    out = error_for_code(err.code(), err.details() or err.code().name, reason=reason)
    out.metadata.update(metadata)
    if isinstance(out, InvalidArgument) and status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.violations = [(v.field, v.description) for v in bad.field_violations]
    return out


def from_status(status: status_pb2.Status) -> ChorusError:
    """A `google.rpc.Status` carried in a response (e.g. one result of a batch call) as a
    `ChorusError` keeping its code, message, `ErrorInfo.reason` and `BadRequest` violations.
    """
    reason = None
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    code = status_code_from_rpc(status.code)
    out = error_for_code(code, status.message or code.name, reason=reason)
    if isinstance(out, InvalidArgument):
        out.violations = violations
    return out
