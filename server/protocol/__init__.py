"""The protocol layer, free of any transport: the data plane (encode, sample and decode on numpy
arrays, with their limits and checks) and the registry every request resolves its model through;
the Open Inference Protocol written once (typed messages, their rules, and one service with
Triton's extensions) and the native API's model info; the call scope every request of either
transport runs in (request id, admission, span, metrics), and the one table from error to status.
The gRPC and HTTP front ends convert their messages and call into it."""
