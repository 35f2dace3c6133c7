"""The one table from domain error to gRPC status (the rpc wrapper in edge.py applies it).

Anything not in the table is INTERNAL with a generic message: internals never leak.
"""

from __future__ import annotations

import grpc

from vae_serve.errors import (
    DeadlineExceeded,
    Draining,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    ServingError,
    TooLarge,
)

__all__ = ["STATUS_CODES", "status_for"]

STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Draining: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls], str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server logged the details"
