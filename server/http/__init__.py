"""The HTTP front end: KServe v2 REST and the REST API for people, on the gRPC server's event loop."""
