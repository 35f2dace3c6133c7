"""Every setting of `vae-serve`, from flags or `VAE_*` environment variables, validated at start.

Built once by the entry point and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from vae_serve import DEFAULT_REPOSITORY

__all__ = ["MIN_MESSAGE_BYTES", "Settings", "SettingsError", "ValidationError", "describe_error"]

# The API's own messages need this much whatever the model: GetModelInfo's reply carries the
# model card (a few KB), and one row of the default model is 784 floats (3136 bytes) plus framing.
# The client refuses a smaller limit too. A model that needs more is refused when it loads.
MIN_MESSAGE_BYTES = 64 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VAE_",
        cli_prog_name="vae-serve",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        extra="forbid",
    )

    host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port).")
    metrics_port: int = Field(
        8002, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics endpoint binds.")
    model_repository: Path = Field(DEFAULT_REPOSITORY, description="Root of <name>/<version>/ directories.")
    model: str = Field("fashion-vae", min_length=1, description="Model name in the repository.")
    model_version: str | None = Field(
        None,
        description="Version to serve at start (default: the highest); newer ones found later still load.",
    )
    repository_poll_s: float = Field(
        2.0, ge=0, description="How often to look for new versions in the repository (0: never; SIGHUP: now)."
    )
    keep_versions: int = Field(
        2, ge=1, le=16, description="Versions kept loaded for requests that pin one (the latest included)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when it really loads, else CPU; cuda: refuse to start without it."
    )
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads per graph run (0: ORT decides).")
    max_batch_size: int = Field(
        64, ge=1, description="Most rows merged into one ORT run (1: no batching; larger requests run alone)."
    )
    max_queue_delay_us: int = Field(
        2000,
        ge=0,
        le=1_000_000,
        description="Most a partial batch waits for as many requests as the last one merged (0: never wait).",
    )
    max_queue_rows: int = Field(
        16384,
        ge=1,
        description="Rows that may wait per graph; beyond, requests get RESOURCE_EXHAUSTED at once.",
    )
    queue_delay_policy: Literal["adaptive", "fixed"] = Field(
        "adaptive",
        description="adaptive: a partial batch waits only for as many requests as the last one merged; "
        "fixed: it always waits until full or --max-queue-delay-us.",
    )
    max_request_rows: int = Field(
        8192, ge=1, description="Most rows a request may carry (N, or N*K for posterior samples)."
    )
    max_samples: int = Field(
        4096,
        ge=1,
        description="Most samples K one Sample request may ask for (default: 4096, or "
        "--max-request-rows if lower).",
    )
    max_message_bytes: int = Field(
        32 * 1024 * 1024,  # a full 8192-row Encode (25.7 MB) fits; each byte costs the loop and ~4x in memory
        le=2**31 - 1,
        description=f"Largest gRPC message received or sent, in bytes (at least {MIN_MESSAGE_BYTES}).",
    )
    max_concurrent_rpcs: int = Field(
        2048,
        ge=1,
        description="Data-plane requests (Encode, Decode, Sample, ModelInfer) handled at once; beyond, "
        "RESOURCE_EXHAUSTED at once. Health, reflection and model info never count.",
    )
    max_concurrent_streams: int = Field(
        512, ge=1, le=65535, description="Concurrent calls one client connection (HTTP/2) may carry."
    )
    receive_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds a call has to deliver its request message after its headers; "
        "beyond, DEADLINE_EXCEEDED and its slot is freed.",
    )
    max_connection_idle_s: float = Field(
        300.0, ge=0, description="Close a client connection that carried no call for this long (0: never)."
    )
    max_connection_age_s: float = Field(
        1800.0,
        ge=0,
        description="Ask a client to reconnect (GOAWAY) once its connection is this old (0: never); "
        "its calls in flight then get --max-connection-age-grace-s.",
    )
    max_connection_age_grace_s: float = Field(
        60.0, ge=0, description="Seconds calls may still run on a connection asked to reconnect."
    )
    keepalive_time_s: float = Field(
        60.0,
        gt=0,
        description="Ping an idle client connection this often; one that does not answer within "
        "20 s is closed, freeing what it held.",
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection (switch off in production).")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS (with --tls-key).")
    tls_key: Path | None = Field(None, description="PEM private key for --tls-cert.")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: require client certificates (mTLS).")
    drain_grace_s: float = Field(
        10.0,
        ge=0,
        description="Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Serving processes sharing the port (SO_REUSEPORT), each with its own batcher.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.max_queue_rows < max(self.max_batch_size, self.max_request_rows):
            raise ValueError(
                "--max-queue-rows must be at least --max-batch-size and --max-request-rows, "
                "or some valid requests could never run"
            )
        return self

    @model_validator(mode="after")
    def _workers_need_a_port(self) -> Settings:
        if self.workers > 1 and (self.port == 0 or self.metrics_port == 0):
            raise ValueError(
                "--workers above 1 needs a fixed --port and --metrics-port (0 would differ per worker)"
            )
        return self

    @model_validator(mode="after")
    def _tls_files_usable(self) -> Settings:
        """TLS flags come in working pairs, and the PEM files parse (so a bad one fails here, not at bind)."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} not found")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if self.tls_cert is not None:
            try:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"--tls-cert {self.tls_cert} / --tls-key {self.tls_key}: not a matching PEM pair ({exc})"
                ) from None
        if self.tls_client_ca is not None:
            try:
                context.load_verify_locations(self.tls_client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"--tls-client-ca {self.tls_client_ca}: not a PEM CA bundle ({exc})"
                ) from None
        return self

    @model_validator(mode="after")
    def _samples_fit_a_request(self) -> Settings:
        """K prior draws are K rows, decoded in one run: every admissible K must also be an
        admissible request (and so fit the queue, which holds --max-request-rows)."""
        if self.max_samples <= self.max_request_rows:
            return self
        if "max_samples" not in self.model_fields_set:  # the default follows a lower row limit
            self.max_samples = self.max_request_rows
            return self
        raise ValueError(
            f"--max-samples {self.max_samples} exceeds --max-request-rows {self.max_request_rows}: "
            f"a Sample of K draws is K rows, so no request could carry the largest K"
        )

    @model_validator(mode="after")
    def _messages_fit_the_api(self) -> Settings:
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(
                f"--max-message-bytes {self.max_message_bytes} is under the {MIN_MESSAGE_BYTES}-byte "
                f"minimum: GetModelInfo's reply (with the model card) and one row of each request "
                f"and response must fit in a message"
            )
        return self


def describe_error(exc: ValidationError | SettingsError) -> str:
    """One line per bad setting, naming both its flag and its environment variable."""
    if isinstance(exc, SettingsError):
        return str(exc)
    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        where = f"--{name.replace('_', '-')} / VAE_{name.upper()}: " if name else ""
        got = f" (got {err['input']!r})" if name and "input" in err else ""
        parts.append(f"{where}{err['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(parts)
