"""An OTLP/gRPC trace receiver that counts spans and drops them: what a traced server exports to in
bench/tracing.py, in a process of its own so its cost is not the load generator's.

    python bench/_otlp_sink.py     # prints "otlp sink on 127.0.0.1:PORT"
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    logging.basicConfig(level="INFO", format="%(message)s")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    logging.info("otlp sink on 127.0.0.1:%d", port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
