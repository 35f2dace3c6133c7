"""`vae-serve`: the model server. At the top, what assembles and runs it (the app, the worker
supervisor, settings and the command line, the lifecycle, admission and drain, the ports); below,
one subpackage per job: `protocol` (transport-free), its two transports `grpc` and `http`,
`models`, `runners` and `telemetry`. Imports go down the layers: transports to protocol, protocol
to runners and models, everything to telemetry; never sideways between transports."""
