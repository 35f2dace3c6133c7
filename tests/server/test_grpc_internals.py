"""grpc_internals.py against the installed grpcio, grpcio-health-checking and grpcio-reflection.

Each point its docstring lists is checked here: the versions, the signatures of what it calls, the
shape of the generated registration functions, the code health.py re-implements, and, on a
grpc.aio server in this process, that a unary call reaches a stream-unary handler, whose read can
be cancelled and the call still answered. A failure names what changed: run this file before
raising the caps in pyproject.toml, and after any upgrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc.aio._server import Server as AioServer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from version_pins import check_written_for

from vae_serve._proto.inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.server.grpc import grpc_internals as internals
from vae_serve.server.grpc.health import HealthServicer
from vae_serve.server.grpc.registration import ReceiveTimeout, register

CHANGED = "grpc changed under server/grpc/grpc_internals.py"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"{CHANGED}: {what}")


@pytest.mark.parametrize("distribution", sorted(internals.WRITTEN_FOR))
def test_the_installed_version_is_one_the_adapter_was_written_for(distribution: str) -> None:
    check_written_for(distribution, internals.WRITTEN_FOR, "server/grpc/grpc_internals.py")


def _shape(function: Callable[..., Any]) -> str:
    """A signature without its annotations: "(self, service_name, method_handlers)"."""
    signature = inspect.signature(function)
    parameters = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=signature.empty))


SIGNATURES = {
    "grpc.aio Server.add_registered_method_handlers": (
        AioServer.add_registered_method_handlers,
        "(self, service_name, method_handlers)",
    ),
    "grpc.aio Server.add_generic_rpc_handlers": (
        AioServer.add_generic_rpc_handlers,
        "(self, generic_rpc_handlers)",
    ),
    "grpc.method_handlers_generic_handler": (
        grpc.method_handlers_generic_handler,
        "(service, method_handlers)",
    ),
    "grpc.stream_unary_rpc_method_handler": (
        grpc.stream_unary_rpc_method_handler,
        "(behavior, request_deserializer=None, response_serializer=None)",
    ),
    "grpc.aio.ServicerContext.read": (grpc.aio.ServicerContext.read, "(self)"),
    "health.aio.HealthServicer.set": (health.aio.HealthServicer.set, "(self, service, status)"),
    "health.aio.HealthServicer.enter_graceful_shutdown": (
        health.aio.HealthServicer.enter_graceful_shutdown,
        "(self)",
    ),
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_what_the_adapter_calls_keeps_its_signature(name: str) -> None:
    function, expected = SIGNATURES[name]
    _expect(_shape(function) == expected, f"{name} is now {_shape(function)}, was {expected}")


# The code health.py re-implements or waits on, by the SHA-256 of its source. A new value means
# grpcio-health-checking changed it: read the new code, carry what applies into health.py's
# `HealthServicer` (and `HealthBase`), then record the new value.
REIMPLEMENTED = {
    "Watch": "a2236842ffee8e0da0c07df8fd33392af99a0e81932efdeb1ee5cbf159037554",
    "_set": "63173ed1f1b2d9c28fc58b720773d6b39905b619fc2656a2a612c33a7c0dfd9c",
}


@pytest.mark.parametrize("name", list(REIMPLEMENTED))
def test_the_health_code_health_py_mirrors_is_unchanged(name: str) -> None:
    digest = hashlib.sha256(inspect.getsource(getattr(health.aio.HealthServicer, name)).encode()).hexdigest()
    _expect(
        digest == REIMPLEMENTED[name],
        f"grpc_health's asyncio HealthServicer.{name} is not the code health.py mirrors any more: read "
        f"the new one, carry over what applies, then record its digest {digest}",
    )


class _AnyServicer:
    """A servicer with every method, for the generated functions to take theirs from."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return lambda *args: None


GENERATED = {
    "vae": (vae_pb2_grpc.add_VAEServiceServicer_to_server, vae_pb2.DESCRIPTOR.services_by_name["VAEService"]),
    "oip": (
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
        grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    ),
    "health": (
        health_pb2_grpc.add_HealthServicer_to_server,
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    ),
    "reflection": (
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ),
}


@pytest.mark.parametrize("name", list(GENERATED))
def test_generated_registration_hands_over_one_handler_per_method(name: str) -> None:
    add, service = GENERATED[name]
    assert isinstance(service, ServiceDescriptor)
    services = internals.generated_handlers(add, _AnyServicer())
    registered = f"{add.__qualname__} registered {sorted(services)}, not {service.full_name} alone"
    _expect(list(services) == [service.full_name], registered)
    handlers = services[service.full_name]
    methods = sorted(handlers)
    expected = sorted(m.name for m in service.methods)
    _expect(methods == expected, f"{add.__qualname__} registered methods {methods}, not {expected}")
    for method in service.methods:
        handler = handlers[method.name]
        streaming = (handler.request_streaming, handler.response_streaming)
        wanted = (method.client_streaming, method.server_streaming)
        _expect(streaming == wanted, f"{name} {method.name}'s handler streams {streaming}, not {wanted}")
        request = message_factory.GetMessageClass(method.input_type)
        found = internals.request_class(handler).DESCRIPTOR.full_name
        _expect(found == request.DESCRIPTOR.full_name, f"{name} {method.name}'s deserializer parses {found}")


def test_a_registration_that_gives_no_handlers_by_name_fails_loudly() -> None:
    def generic_only(servicer: object, server: Any) -> None:
        server.add_generic_rpc_handlers(())

    with pytest.raises(RuntimeError, match="registered no handlers by name"):
        internals.generated_handlers(generic_only, _AnyServicer())


def test_a_deserializer_that_is_no_generated_from_string_is_refused() -> None:
    handler = grpc.unary_unary_rpc_method_handler(lambda r, c: r, request_deserializer=lambda b: b)
    with pytest.raises(TypeError, match="not a generated FromString"):
        internals.request_class(handler)


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    _expect(False, what)


def test_the_health_servicer_state_is_where_health_base_reads_it() -> None:
    async def scenario() -> None:
        servicer = internals.HealthBase()
        _expect(servicer.status("") == SERVING, "_server_status does not hold the server's own status")
        _expect(servicer.status("vae") == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN, "unknown is known")
        condition = servicer.changes("vae")
        _expect(isinstance(condition, asyncio.Condition), "_server_watchers holds no asyncio.Condition")
        _expect(servicer.changes("vae") is condition, "_server_watchers makes a new condition on each read")
        _expect(condition in servicer.all_changes(), "_server_watchers' values are not its conditions")

        woken: list[int] = []

        async def watch() -> None:
            async with condition:
                await condition.wait()
                woken.append(servicer.status("vae"))

        for change in (lambda: servicer.set("vae", SERVING), servicer.enter_graceful_shutdown):
            waiter = asyncio.create_task(watch())
            await asyncio.sleep(0)  # the waiter holds the condition and waits on it
            await change()
            await _until(waiter.done, "setting a status no longer notifies its condition")
        _expect(woken == [SERVING, NOT_SERVING], f"the statuses seen on each notice are {woken}")

    asyncio.run(scenario())


async def _never(event: asyncio.Event) -> AsyncIterator[health_pb2.HealthCheckRequest]:
    await event.wait()
    yield health_pb2.HealthCheckRequest()


async def _nothing() -> AsyncIterator[health_pb2.HealthCheckRequest]:
    return
    yield  # an async generator that ends before its first message


def test_unary_calls_reach_stream_unary_handlers_whose_reads_can_be_cancelled() -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        receive = ReceiveTimeout(0.2)
        servicer = HealthServicer()
        register(server, health_pb2_grpc.add_HealthServicer_to_server, servicer, receive)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        method = "/grpc.health.v1.Health/Check"
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                reply = await check(health_pb2.HealthCheckRequest(), timeout=10)
                _expect(reply.status == SERVING, "a unary call no longer reaches its stream-unary handler")

                stream = channel.stream_unary(
                    method,
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                )
                release = asyncio.Event()
                stalled = asyncio.ensure_future(stream(_never(release), timeout=10))
                # Another call, answered while the stalled one waits: its task is not the other's.
                reply = await check(health_pb2.HealthCheckRequest(), timeout=10)
                _expect(reply.status == SERVING, "a call waits behind another call's read")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stalled
                release.set()
                code, details = caught.value.code(), caught.value.details() or ""
                answered = code == grpc.StatusCode.DEADLINE_EXCEEDED and "no request message" in details
                _expect(answered, f"a call whose read was cancelled got {code} {details!r}, not its answer")

                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stream(_nothing(), timeout=10)
                details = caught.value.details() or ""
                _expect(
                    "ended before its request message" in details, f"a call without a message: {details!r}"
                )

                garbage = channel.unary_unary(method, request_serializer=bytes)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await garbage(b"\x0a\xff", timeout=10)
                parsed = caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                _expect(parsed, f"bytes that do not parse got {caught.value.code()}, not the lenient parse")
        finally:
            receive.close()
            await server.stop(0)

    asyncio.run(scenario())
