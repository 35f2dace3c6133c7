"""Every row of the error table, and the fallback that must never leak internals."""

import grpc
import pytest

from vae_serve import errors
from vae_serve.server.protocol.status import HTTP_STATUS, STATUS_CODES, http_status_for, status_for

EXPECTED = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,
    errors.Draining: grpc.StatusCode.UNAVAILABLE,
    errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    errors.LoadFailed: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooManyModels: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def test_table_covers_every_serving_error():
    subclasses = {
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ServingError)
    }
    assert set(STATUS_CODES) == subclasses - {errors.ServingError}


@pytest.mark.parametrize(("cls", "code"), EXPECTED.items(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_error_maps_to_its_code_with_its_message(cls, code):
    assert status_for(cls("what went wrong")) == (code, "what went wrong")


def test_http_has_a_status_for_every_error_and_415_for_a_body_of_the_wrong_type():
    assert set(HTTP_STATUS) == set(STATUS_CODES)
    assert http_status_for(errors.UnsupportedMediaType("send JSON")) == (
        415,
        grpc.StatusCode.INVALID_ARGUMENT,
        "send JSON",
    )


def test_model_control_refusals_are_not_retried_blindly():
    """A full set of models needs an unload first: 409, not 429 (which says "retry shortly")."""
    assert http_status_for(errors.TooManyModels("unload one"))[0] == 409
    assert http_status_for(errors.LoadFailed("broken"))[0] == 400


@pytest.mark.parametrize(
    "exc", [ValueError("secret path /etc/x"), KeyError("k"), errors.ServingError("base")]
)
def test_anything_else_is_internal_without_details(exc):
    code, message = status_for(exc)
    assert code is grpc.StatusCode.INTERNAL
    assert "secret" not in message and "internal error" in message
