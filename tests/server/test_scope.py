"""The call scope alone, in process: every step it owns is checked at the point a transport relies
on it (inside the block, and right after it, before any answer could go out)."""

import asyncio
import logging

import grpc
import pytest

from vae_serve.errors import InvalidInput, ModelNotFound
from vae_serve.server.drain import Activity
from vae_serve.server.protocol.calls import RequestIdFilter, request_id
from vae_serve.server.protocol.scope import CallScope, Method, note_model
from vae_serve.server.protocol.status import INTERNAL_MESSAGE
from vae_serve.server.telemetry import observe
from vae_serve.server.telemetry.metrics import Metrics

LOG = logging.getLogger("tests.scope")
WORK = Method("Decode", "grpc", LOG, work=True)
CONTROL = Method("GetModelInfo", "grpc", LOG)
HTTP_WORK = Method("http.Decode", "http", LOG, work=True, unanswered=499)
PROBE = Method("http.Live", "http", LOG, counted=False, unanswered=499)


class Edge:
    """What a front end hands the scope: a fresh registry and admission per test."""

    def __init__(self, max_working: int = 2048) -> None:
        self.metrics = Metrics()
        self.activity = Activity(max_working=max_working)

    def scope(self, method: Method, rid: str = "rid-1") -> CallScope:
        return CallScope(
            method, self.metrics, self.activity, rid, (("x-request-id", rid),), lambda: "ipv4:1.2.3.4:5"
        )

    def count(self, method: str, code: str, model: str = "") -> float:
        value = self.metrics.registry.get_sample_value(
            "vae_serve_requests_total", {"method": method, "code": code, "model": model}
        )
        return value or 0.0

    def timed(self, method: str, code: str, model: str = "") -> float:
        labels = {"method": method, "code": code, "model": model}
        value = self.metrics.registry.get_sample_value("vae_serve_request_duration_seconds_count", labels)
        return value or 0.0

    def in_flight(self, method: str) -> float:
        value = self.metrics.registry.get_sample_value("vae_serve_requests_in_flight", {"method": method})
        return value or 0.0


def cancel_inside(scope: CallScope) -> None:
    """A call cancelled in its handler, after it was admitted."""
    with scope as call:
        call.admit()
        raise asyncio.CancelledError


@pytest.fixture
def access_lines(caplog):
    """The access log's records during the test."""
    observe.set_access_log(True)
    with caplog.at_level(logging.INFO, logger="vae_serve.access"):
        yield lambda: [r for r in caplog.records if r.name == "vae_serve.access"]
    observe.set_access_log(False)


def test_a_call_holds_its_request_id_gauge_and_slot_only_inside_the_block():
    edge = Edge()
    token = request_id.set("outer")
    try:
        with edge.scope(WORK, "rid-7") as call:
            call.admit()
            assert request_id.get() == "rid-7"
            assert edge.in_flight("Decode") == 1
            assert (edge.activity.in_flight, edge.activity.started_total, edge.activity.working) == (1, 1, 1)
            assert edge.count("Decode", "OK") == 0
        assert request_id.get() == "outer"  # reset, not cleared: a nested call restores its caller's
    finally:
        request_id.reset(token)
    assert edge.in_flight("Decode") == 0
    assert (edge.activity.in_flight, edge.activity.started_total, edge.activity.working) == (0, 1, 0)
    assert edge.count("Decode", "OK") == 1 and edge.timed("Decode", "OK") == 1
    assert (call.code, call.message, call.status) == (grpc.StatusCode.OK, "", None)


def test_an_error_from_the_table_is_swallowed_released_and_counted_under_its_code(caplog):
    edge = Edge()
    with caplog.at_level(logging.DEBUG, logger="tests.scope"), edge.scope(WORK) as call:
        call.admit()
        raise InvalidInput("z must be [n, 32]")
    assert (call.code, call.message) == (grpc.StatusCode.INVALID_ARGUMENT, "z must be [n, 32]")
    assert edge.activity.working == 0 and edge.activity.in_flight == 0 and edge.in_flight("Decode") == 0
    assert edge.count("Decode", "INVALID_ARGUMENT") == 1 and edge.count("Decode", "OK") == 0
    assert not caplog.records  # a caller's mistake is not the server's error
    assert request_id.get() == "-"


def test_an_internal_error_is_logged_with_its_traceback_and_request_id_and_answered_generically(caplog):
    edge = Edge()
    caplog.handler.addFilter(RequestIdFilter())  # reads the request id when the line is written
    with caplog.at_level(logging.ERROR, logger="tests.scope"), edge.scope(CONTROL, "boom-1") as call:
        raise RuntimeError("the decoder fell over")
    assert (call.code, call.message) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    (record,) = caplog.records
    assert record.name == "tests.scope" and record.getMessage() == "GetModelInfo failed"
    assert record.exc_info is not None and "fell over" in str(record.exc_info[1])
    assert record.request_id == "boom-1"
    assert edge.count("GetModelInfo", "INTERNAL") == 1 and edge.activity.in_flight == 0


def test_a_cancelled_call_goes_on_up_counted_as_cancelled_and_released():
    edge = Edge()
    call = edge.scope(WORK)
    with pytest.raises(asyncio.CancelledError):
        cancel_inside(call)
    assert call.code is grpc.StatusCode.CANCELLED
    assert edge.activity.working == 0 and edge.activity.in_flight == 0 and edge.in_flight("Decode") == 0
    assert edge.count("Decode", "CANCELLED") == 1
    assert request_id.get() == "-"


def test_only_work_takes_a_slot_and_a_refused_call_gives_back_none():
    edge = Edge(max_working=1)
    with edge.scope(WORK, "holder") as holder:
        holder.admit()
        with edge.scope(CONTROL) as control:
            control.admit()  # a control call passes a full server
            assert edge.activity.working == 1
        with edge.scope(WORK) as refused:
            refused.admit()
            pytest.fail("admitted past --max-concurrent-rpcs")
        assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert edge.activity.working == 1  # the holder's slot is still taken
        assert request_id.get() == "holder"
    assert edge.activity.working == 0 and edge.activity.in_flight == 0
    assert control.code is grpc.StatusCode.OK and edge.count("Decode", "RESOURCE_EXHAUSTED") == 1


def test_a_refused_call_while_draining_is_unavailable():
    edge = Edge()
    asyncio.run(edge.activity.state.serve())
    asyncio.run(edge.activity.state.drain())
    edge.activity.state.refuse()
    with edge.scope(WORK) as call:
        call.admit()
    assert call.code is grpc.StatusCode.UNAVAILABLE and edge.count("Decode", "UNAVAILABLE") == 1


def test_a_code_the_transport_sets_is_the_one_recorded():
    edge = Edge()
    with edge.scope(WORK) as call:  # as gRPC answers a request it could not read: no handler, no slot
        call.code, call.message = grpc.StatusCode.RESOURCE_EXHAUSTED, "too many fields"
    assert edge.count("Decode", "RESOURCE_EXHAUSTED") == 1 and edge.activity.working == 0


def test_a_probe_is_in_the_gauge_but_not_the_drains_count():
    edge = Edge()
    with edge.scope(PROBE) as call:
        call.admit()
        assert edge.in_flight("http.Live") == 1 and edge.activity.in_flight == 0
        call.status = 200
    assert edge.activity.started_total == 0 and edge.count("http.Live", "OK") == 1


def test_an_http_call_carries_its_status_into_the_access_line(access_lines):
    edge = Edge()
    with edge.scope(HTTP_WORK, "h-1") as ok:
        ok.admit()
        ok.status = 200
    with edge.scope(HTTP_WORK, "h-2") as missing:
        raise ModelNotFound("no model 'x'")
    closed = edge.scope(HTTP_WORK, "h-3")
    with pytest.raises(asyncio.CancelledError):
        cancel_inside(closed)
    assert (missing.status, missing.code, missing.message) == (404, grpc.StatusCode.NOT_FOUND, "no model 'x'")
    assert closed.status == 499  # the client closed before an answer was made
    shown = [(r.method, r.status, r.http_status) for r in access_lines()]
    assert shown == [
        ("http.Decode", "OK", 200),
        ("http.Decode", "NOT_FOUND", 404),
        ("http.Decode", "CANCELLED", 499),
    ]
    assert edge.count("http.Decode", "NOT_FOUND") == 1 and edge.activity.working == 0


def test_a_grpc_call_has_no_http_status_in_its_access_line(access_lines):
    edge = Edge()
    with edge.scope(WORK) as call:
        call.admit()
    (record,) = access_lines()
    assert (record.method, record.status, record.peer) == ("Decode", "OK", "ipv4:1.2.3.4:5")
    assert not hasattr(record, "http_status") and call.status is None


def test_the_scope_leaves_the_current_observed_call_as_it_found_it(access_lines):
    edge = Edge()
    with edge.scope(WORK):
        observe.note("fashion-vae", "1", 5)  # what the data plane says inside the call
    with edge.scope(CONTROL):
        pass
    observe.note("other", "9", 1)  # outside any call: nowhere to go
    shown = [(r.method, r.model, r.version, r.rows) for r in access_lines()]
    assert shown == [("Decode", "fashion-vae", "1", 5), ("GetModelInfo", "-", "-", 0)]


def test_the_model_a_call_resolved_labels_its_metrics_and_access_line(access_lines):
    edge = Edge()
    with edge.scope(CONTROL):
        note_model("fashion-vae")  # what DataPlane.admit says once the name resolved
    with edge.scope(WORK) as call:
        call.admit()
        raise ModelNotFound("no model 'x/../y'")  # never resolved: no model, whatever was asked
    note_model("other")  # outside any call: nowhere to go
    assert edge.count("GetModelInfo", "OK", model="fashion-vae") == 1
    assert edge.count("Decode", "NOT_FOUND", model="") == 1
    assert edge.timed("GetModelInfo", "OK", model="fashion-vae") == 1
    assert [(r.method, r.model) for r in access_lines()] == [("GetModelInfo", "fashion-vae"), ("Decode", "-")]
