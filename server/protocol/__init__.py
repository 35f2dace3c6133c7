"""The protocol layer, free of any transport: the data plane (encode, sample and decode on numpy
arrays, with their limits and checks), the Open Inference Protocol's models and Triton's
extensions, the call scope every request of either transport runs in (request id, admission,
span, metrics), and the one table from error to status. The gRPC and HTTP front ends convert
their messages and call into it."""
