"""The one table from domain error to status, gRPC and HTTP (the call scope, scope.py, applies it).

Anything not in the table is INTERNAL (500) with a generic message: internals never leak.
"""

from __future__ import annotations

import grpc

from vae_serve.errors import (
    DeadlineExceeded,
    Draining,
    InvalidInput,
    LoadFailed,
    ModelNotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    ServingError,
    TooLarge,
    TooManyModels,
    Unauthenticated,
    Unsupported,
    UnsupportedMediaType,
)

__all__ = ["HTTP_STATUS", "STATUS_CODES", "http_status_for", "status_for"]

STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Draining: grpc.StatusCode.UNAVAILABLE,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    LoadFailed: grpc.StatusCode.INVALID_ARGUMENT,
    TooManyModels: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

# The same errors over HTTP: 413 for a request or response over the message limit, 429 (with
# Retry-After) for a full queue or too many requests at once, as KServe v2 REST and Triton answer;
# 415 for a body of a type the route does not take; 401 (with WWW-Authenticate) and 403 for model
# control without or with a wrong admin token.
HTTP_STATUS: dict[type[ServingError], int] = {
    InvalidInput: 400,
    TooLarge: 413,
    Overloaded: 429,
    DeadlineExceeded: 504,
    ModelNotFound: 404,
    NotReady: 503,
    Draining: 503,
    Unsupported: 501,
    UnsupportedMediaType: 415,
    LoadFailed: 400,
    TooManyModels: 409,
    Unauthenticated: 401,
    PermissionDenied: 403,
}
INTERNAL_MESSAGE = "internal error; the server logged the details"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls], str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def http_status_for(exc: BaseException) -> tuple[int, grpc.StatusCode, str]:
    """(HTTP status, the gRPC code metrics record it under, message)."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls], STATUS_CODES[cls], str(exc)
    return 500, grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
