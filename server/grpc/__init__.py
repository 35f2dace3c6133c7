"""The gRPC front end: the native `vae.v1.VAEService` and the Open Inference Protocol's
`GRPCInferenceService` as thin servicers over the protocol layer, the wrapper every RPC goes
through, registration that bounds what a request may cost before it is parsed, health, and the
event loop that serves them."""
