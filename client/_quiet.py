"""Imported by `vae-client` before anything imports grpc, which reads GRPC_VERBOSITY once, at import:
set later, its log lines (one per failed TLS handshake, say) would surround the one-line error."""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
