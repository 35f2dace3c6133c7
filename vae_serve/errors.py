"""Domain errors shared by every front end; no gRPC here.

The server maps each class to exactly one gRPC status in `vae_serve.server.protocol.status`, so the same
failure reads the same on the native API and on the Open Inference Protocol.
"""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "Draining",
    "InvalidInput",
    "LoadFailed",
    "ModelLoadError",
    "ModelNotFound",
    "NotReady",
    "Overloaded",
    "PermissionDenied",
    "PortError",
    "ServingError",
    "StartError",
    "TooLarge",
    "TooManyModels",
    "Unauthenticated",
    "Unsupported",
    "UnsupportedMediaType",
    "quote",
]


class ServingError(Exception):
    """Base of every error a request can end in; the message is safe to send to the client."""


class InvalidInput(ServingError):
    """The request is malformed: a shape, a size, a value or a missing field (INVALID_ARGUMENT)."""


class TooLarge(ServingError):
    """The request or its response would exceed a configured size limit (RESOURCE_EXHAUSTED)."""


class Overloaded(ServingError):
    """The server sheds this request to protect the ones it admitted (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the work started; it was not computed."""


class ModelNotFound(ServingError):
    """No such model or version (NOT_FOUND)."""


class NotReady(ServingError):
    """No model is loaded yet (UNAVAILABLE: retry)."""


class Draining(ServingError):
    """The server is shutting down and takes no new work (UNAVAILABLE: retry elsewhere)."""


class Unsupported(ServingError):
    """The server does not offer this operation, by design (UNIMPLEMENTED: do not retry)."""


class UnsupportedMediaType(ServingError):
    """The request's body is of a type this call does not take (INVALID_ARGUMENT; HTTP 415)."""


class LoadFailed(ServingError):
    """A model asked to load cannot be served as it is in the repository; what was served still
    is (FAILED_PRECONDITION: fix the repository, then load again)."""


class TooManyModels(ServingError):
    """Loading one more model would exceed --max-loaded-models (RESOURCE_EXHAUSTED: unload one)."""


class Unauthenticated(ServingError):
    """The call needs credentials and carries none usable (UNAUTHENTICATED; HTTP 401)."""


class PermissionDenied(ServingError):
    """The caller may not do this: a wrong token, or no way to authenticate here (PERMISSION_DENIED;
    HTTP 403)."""


class StartError(Exception):
    """The server cannot start as configured; the message says what and why, in one line."""


class ModelLoadError(StartError):
    """A model version on disk cannot be served; the message names the file and the reason."""


class PortError(StartError):
    """A port cannot be listened on; the message names the address, the reason and the flag."""


def quote(text: str, limit: int = 64) -> str:
    """`text` as a message may echo it: quoted, and cut to `limit` characters (a client's field
    can be megabytes long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"
