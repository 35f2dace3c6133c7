"""How a request's rows reach ONNX Runtime: inline for one row at a time, or through the dynamic
batcher that merges concurrent requests into one run; and the per-graph statistics Triton's
tools read."""
