"""Every setting of `vae-serve`: flags, `VAE_*` environment variables, a TOML config file, defaults.

`Settings` is the one parsing surface, flat, so every flag and variable keeps its plain name
(`--max-batch-size`, `VAE_MAX_BATCH_SIZE`, `max_batch_size = 32` in the file). Precedence: flags,
then the environment, then `--config` / `VAE_CONFIG`, then the defaults. Each setting (type,
bounds, default, help) is stated once, in the group it belongs to; `Settings` inherits every
group, checks how they fit together, and hands each component its group (`settings.batching`,
`settings.limits`, ...), frozen. The entry point builds it once and passes it down: nothing else
in the server reads a setting from the environment. (The only variable it touches is one it
sets, PROMETHEUS_MULTIPROC_DIR, for prometheus_client in workers.py; OpenTelemetry's own `OTEL_*`
variables are its business and are not restated here.)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from vae_serve import DEFAULT_REPOSITORY, __version__
from vae_serve.server.protocol.admin import TokenFileError, read_token_file

__all__ = [
    "HELP_SECTIONS",
    "MIN_MESSAGE_BYTES",
    "MODEL_NAME",
    "STORE_SCHEMES",
    "BatchingSettings",
    "HttpSettings",
    "LimitSettings",
    "LogSettings",
    "NetworkSettings",
    "RepositorySettings",
    "Settings",
    "SettingsError",
    "TLSSettings",
    "ValidationError",
    "check_model_name",
    "check_repository",
    "describe_error",
    "is_store_uri",
    "parse_args",
    "section_of",
    "split_pin",
]

# The API's own messages need this much whatever the model: GetModelInfo's reply carries the
# model card (a few KB), and one row of the default model is 784 floats (3136 bytes) plus framing.
# The client refuses a smaller limit too. A model that needs more is refused when it loads.
MIN_MESSAGE_BYTES = 64 * 1024
# A config file is a few dozen lines; a bigger one (or a FIFO, a device) is a mistake, not read.
MAX_CONFIG_BYTES = 1 << 20
# What a model's name may be: a directory name that is also plain in a URL path, a metric label
# and a log line, and that no file system reads as anything but a name.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128"
# Object stores a --model-repository URI may name (server/models/storage.py reads them).
STORE_SCHEMES = ("s3", "gs", "az")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def check_model_name(name: str) -> str:
    """`name` if it is a model's name as MODEL_NAME has it; raises ValueError saying the rule."""
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"a model name is {_NAME_RULE} characters")
    return name


def split_pin(pin: str) -> tuple[str | None, str]:
    """A `--model-version` entry as (model, version): `3` pins the one model served, `name:3` one
    of several (a version is digits, so the last colon separates them)."""
    name, colon, version = pin.rpartition(":")
    return (name if colon else None), version


def _listed(value: Any) -> Any:
    """A list setting given as one string (an environment variable, a config key): a JSON list,
    or names separated by commas; a single name is a list of one."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError("not a JSON list of strings") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_pin(pin: str) -> str:
    name, version = split_pin(pin)
    if name is not None:
        check_model_name(name)
    if not re.fullmatch(r"0|[1-9][0-9]{0,17}", version):
        raise ValueError("a version is a number, or name:number for one of several models")
    return pin


def check_repository(value: object) -> str:
    """A `--model-repository`: a local directory's path, or `s3://`, `gs://` or `az://` with a
    bucket (container) and an optional prefix. Kept a string: a Path would make s3://b of s3:/b."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text:
        raise ValueError("a directory, or a URI such as s3://bucket/prefix")
    if any(ord(c) < 32 for c in text):
        raise ValueError("control characters are no part of a path or URI")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    if scheme not in STORE_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in STORE_SCHEMES)
        raise ValueError(f"{scheme[:20]!r}: neither a directory nor an object store ({schemes})")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{scheme}://: a bucket name (letters, digits, '.', '_', '-') comes first")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError("a prefix has no '.' or '..' segments")
    return f"{scheme}://{bucket}/{prefix.strip('/')}".rstrip("/")


def is_store_uri(repository: str) -> bool:
    """Whether a checked `--model-repository` names object storage rather than a directory."""
    return repository.partition("://")[0] in STORE_SCHEMES and "://" in repository


ModelName = Annotated[str, AfterValidator(check_model_name)]
Repository = Annotated[str, BeforeValidator(check_repository)]
# Given as a flag repeated (or with commas), a variable or a config key with one or several values.
Names = Annotated[list[ModelName], NoDecode, BeforeValidator(_listed)]
Pins = Annotated[list[Annotated[str, AfterValidator(_check_pin)]], NoDecode, BeforeValidator(_listed)]


class _Group(BaseModel):
    """A group of settings as one component takes it: frozen, and built from a checked `Settings`
    (`settings.batching`, ...) so that settings spanning groups were checked together."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NetworkSettings(_Group):
    """How the server listens and treats connections: the gRPC and metrics endpoints, its
    processes, and the drain on SIGTERM."""

    host: str = Field(
        "0.0.0.0",
        description="Address the gRPC server binds; HTTP and metrics too, unless --http-host / "
        "--metrics-host say otherwise.",
    )
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port).")
    metrics_port: int = Field(
        8002, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)."
    )
    metrics_host: str | None = Field(
        None, description="Address the metrics endpoint binds (default: --host's)."
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Serving processes sharing the port (SO_REUSEPORT), each with its own batcher.",
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection (switch off in production).")
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
    drain_grace_s: float = Field(
        10.0,
        ge=0,
        description="Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled.",
    )
    busy_poll_us: int = Field(
        500,
        ge=0,
        le=10_000,
        description="Microseconds the event loop may poll for the next call before it sleeps "
        "(adapting to the traffic's gaps): cuts a lone request's latency on VMs (0: never poll; "
        "the default is 0 with several --workers).",
    )


class HttpSettings(_Group):
    """The HTTP front end: KServe v2 REST, the /v1 REST API and its docs, beside gRPC in the same
    process. TLS (--tls-*) and the receive timeout apply to it as to gRPC."""

    http: bool = Field(True, description="Serve HTTP beside gRPC (--no-http: gRPC only).")
    http_host: str | None = Field(None, description="Address the HTTP server binds (default: --host's).")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    http_max_connections: int = Field(
        1024,
        ge=1,
        le=65535,
        description="Open HTTP connections at once; beyond, the oldest owing no answer is closed, "
        "and a newcomer gets 503 only when every connection is being answered.",
    )
    http_keep_alive_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Close an HTTP connection idle this long between requests (a proxy in front "
        "should close its idle ones sooner).",
    )
    playground: bool = Field(
        True, description="Serve the web playground at / (--no-playground: the HTTP APIs alone)."
    )
    http_cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins whose web pages may call the HTTP API (CORS), e.g. https://app.example; "
        "none by default. '*' allows any.",
    )


class TLSSettings(_Group):
    """TLS for the gRPC and HTTP ports: off unless a certificate and key are given; mutual with a
    client CA."""

    tls_cert: Path | None = Field(
        None, description="PEM certificate chain: serve TLS (with --tls-key); without it, plaintext."
    )
    tls_key: Path | None = Field(None, description="PEM private key for --tls-cert.")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: require client certificates (mTLS).")


class RepositorySettings(_Group):
    """Which models are served from where, on what device, and how their versions come and go."""

    model_repository: Repository = Field(
        str(DEFAULT_REPOSITORY),
        description="Where the models are: a directory of <name>/<version>/ directories, or the same "
        "layout in object storage (s3://bucket/prefix, gs://..., az://container/prefix), fetched into "
        "--model-cache-dir; credentials from the store's own variables (AWS_*, GOOGLE_*, AZURE_*).",
    )
    model_cache_dir: Annotated[Path, AfterValidator(Path.expanduser)] = Field(
        Path("~/.cache/vae-serve/models"),
        validate_default=True,
        description="Where versions from an object store are kept (one directory per repository URI); "
        "unused for a local repository.",
    )
    store_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Seconds an object store call may wait to connect or for its next byte before "
        "the try fails.",
    )
    store_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Tries after a failed object store call, with backoff (0.25 s doubling to 4 s).",
    )
    model: Names = Field(
        default_factory=list,
        description="A model of the repository to serve (repeat the flag, or separate names with "
        "commas); none given: every model there.",
    )
    default_model: ModelName | None = Field(
        None,
        description="The model that answers requests naming none, also as the OIP models "
        "vae_encoder and vae_decoder (default: the only model served; with several and none "
        "chosen, requests must name one).",
    )
    model_version: Pins = Field(
        default_factory=list,
        description="Version to serve at start (default: the highest): 3 when one model is served, "
        "name:3 for one of several (repeat for each); newer ones found later still load.",
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "poll",
        description="poll: serve new versions as they appear (every --repository-poll-s, SIGHUP); "
        "none: what loads at start stays, nothing is polled; explicit: serve what --model loads at "
        "start and what the repository API loads (POST /v2/repository/models/NAME/load, "
        "RepositoryModelLoad), and nothing else.",
    )
    max_loaded_models: int = Field(
        8,
        ge=1,
        le=1024,
        description="With --model-control-mode explicit, models loaded at once; a load beyond is "
        "refused (FAILED_PRECONDITION / 409) until one is unloaded.",
    )
    admin_token_file: Annotated[Path, AfterValidator(Path.expanduser)] | None = Field(
        None,
        description="File of admin tokens' sha256 hashes (lines 'sha256:<hex> name', made by "
        "vae-serve hash-token), re-read when it changes: model load and unload then need "
        "'authorization: Bearer <token>'. Without it they are served only when gRPC and HTTP "
        "listen on loopback alone.",
    )
    repository_poll_s: float = Field(
        2.0, ge=0, description="How often to look for new versions in the repository (0: never; SIGHUP: now)."
    )
    keep_versions: int = Field(
        2, ge=1, le=16, description="Versions kept loaded for requests that pin one (the latest included)."
    )
    retire_after_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds a replaced model version stays loaded for the requests in flight on it "
        "(then it is closed).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when it really loads, else CPU; cuda: refuse to start without it."
    )
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads per graph run (0: ORT decides).")


class BatchingSettings(_Group):
    """How requests to one graph are queued and merged into ONNX Runtime runs (batching.py, runner.py)."""

    max_batch_size: int = Field(
        64, ge=1, description="Most rows merged into one ORT run (1: no batching; larger requests run alone)."
    )
    max_queue_delay_us: int = Field(
        2000,
        ge=0,
        le=1_000_000,
        description="Most a partial batch waits for company (0: never wait).",
    )
    queue_delay_policy: Literal["adaptive", "fixed"] = Field(
        "adaptive",
        description="adaptive: a partial batch waits only for as many requests as the largest batch of "
        "the last ten delays merged; fixed: it always waits until full or --max-queue-delay-us.",
    )
    max_queue_rows: int = Field(
        16384,
        ge=1,
        description="Rows that may wait per graph; beyond, requests get RESOURCE_EXHAUSTED at once.",
    )


class LimitSettings(_Group):
    """What one request may ask for, and how many are handled at once (dataplane.py, the gRPC options)."""

    max_request_rows: int = Field(
        8192, ge=1, description="Most rows a request may carry (N, or N*K for posterior samples)."
    )
    max_samples: int = Field(
        4096,
        ge=1,
        description="Most samples K one Sample request may ask for (the default follows "
        "--max-request-rows when that is lower).",
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


class LogSettings(_Group):
    """What the process logs and how (cli.configure_logging). Traces are configured by
    OpenTelemetry's own OTEL_* variables (tracing.py), not here."""

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="Level of vae-serve's own lines; other libraries' lines below info stay off "
        "(grpc's own tracing has its variables: GRPC_VERBOSITY, GRPC_TRACE).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or json: one object a line, with the trace and span ids "
        "inside a traced request.",
    )
    access_log: bool = Field(
        False,
        description="Log one line per request: method, model, version, rows, status, duration, peer, "
        "request id.",
    )


_G = TypeVar("_G", bound=_Group)


# Bases in reverse: pydantic collects fields from the last base first, so --help lists them in groups.
class Settings(
    BaseSettings,
    LogSettings,
    LimitSettings,
    BatchingSettings,
    RepositorySettings,
    TLSSettings,
    HttpSettings,
    NetworkSettings,
):
    """Serve a VAE's encoder and decoder from ONNX Runtime over gRPC (its own API and the Open
    Inference Protocol) and HTTP/REST (KServe v2 REST, a REST API for people with its docs at
    /docs, and a web playground at /). Every flag is also a VAE_* variable (--max-batch-size is
    VAE_MAX_BATCH_SIZE) and a key of the --config file (max_batch_size = 32); flags win, then
    variables, then the file."""

    model_config = SettingsConfigDict(
        env_prefix="VAE_",
        cli_prog_name="vae-serve",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_show_env_vars=True,
        extra="forbid",
        frozen=False,
    )

    config: Path | None = Field(
        None,
        description="TOML file of settings, keys named as the flags with underscores "
        "(max_batch_size = 32); flags and VAE_* variables override it.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (put first by CliApp), then arguments, the environment, the config file. No
        .env or secrets directory: what configures the server is what this module documents."""
        return init_settings, env_settings, ConfigFileSource(settings_cls)

    @property
    def network(self) -> NetworkSettings:
        return self._group(NetworkSettings)

    @property
    def http_server(self) -> HttpSettings:
        return self._group(HttpSettings)

    @property
    def tls(self) -> TLSSettings:
        return self._group(TLSSettings)

    @property
    def repository(self) -> RepositorySettings:
        return self._group(RepositorySettings)

    @property
    def batching(self) -> BatchingSettings:
        return self._group(BatchingSettings)

    @property
    def limits(self) -> LimitSettings:
        return self._group(LimitSettings)

    @property
    def logs(self) -> LogSettings:
        return self._group(LogSettings)

    def _group(self, group: type[_G]) -> _G:
        return group.model_validate({name: getattr(self, name) for name in group.model_fields})

    @model_validator(mode="after")
    def _every_port_on_host(self) -> Settings:
        """An operator who keeps gRPC on loopback means the other ports too; a given address wins."""
        if self.http_host is None:
            self.http_host = self.host
        if self.metrics_host is None:
            self.metrics_host = self.host
        return self

    @model_validator(mode="after")
    def _models_agree(self) -> Settings:
        """Names given twice count once; the default and the pins must name models served (with
        no --model, the repository says which at start: models/selection.py checks them then)."""
        self.model = list(dict.fromkeys(self.model))
        pinned = [split_pin(pin)[0] for pin in self.model_version]
        if len(set(pinned)) != len(pinned):
            raise ValueError("--model-version: one version per model")
        if not self.model:
            return self
        served = ", ".join(self.model)
        if self.default_model is not None and self.default_model not in self.model:
            raise ValueError(f"--default-model {self.default_model} is not among --model {served}")
        for pin, name in zip(self.model_version, pinned, strict=True):
            if name is None and len(self.model) > 1:
                raise ValueError(f"--model-version {pin}: several models are served; write name:{pin}")
            if name is not None and name not in self.model:
                raise ValueError(f"--model-version {pin}: {name} is not among --model {served}")
        return self

    @model_validator(mode="after")
    def _models_fit_the_limit(self) -> Settings:
        if self.model_control_mode == "explicit" and self.workers > 1:
            raise ValueError(
                "--model-control-mode explicit serves one process: a load would reach one worker of "
                "several; use --workers 1"
            )
        if self.model_control_mode == "explicit" and len(self.model) > self.max_loaded_models:
            raise ValueError(
                f"--model names {len(self.model)} models, more than "
                f"--max-loaded-models {self.max_loaded_models}"
            )
        return self

    @model_validator(mode="after")
    def _admin_tokens_usable(self) -> Settings:
        """A token file that cannot be used fails here, in one line naming it, not at the first load."""
        if self.admin_token_file is not None:
            try:
                read_token_file(self.admin_token_file)
            except TokenFileError as exc:
                raise ValueError(f"--admin-token-file {exc}") from None
        return self

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
        if self.workers > 1 and (
            self.port == 0 or self.metrics_port == 0 or (self.http and self.http_port == 0)
        ):
            raise ValueError(
                "--workers above 1 needs a fixed --port, --http-port and --metrics-port "
                "(0 would differ per worker)"
            )
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        """Two listeners on one port: with several workers the port is shared (SO_REUSEPORT), so
        the second bind would fail only in a worker, after the model load."""
        named = [("--port", self.host, self.port), ("--metrics-port", self.metrics_host, self.metrics_port)]
        if self.http:
            named.insert(1, ("--http-port", self.http_host, self.http_port))
        for i, (flag, host, port) in enumerate(named):
            for earlier, other_host, other_port in named[:i]:
                if port and port == other_port and _overlap(host or "", other_host or ""):
                    raise ValueError(f"{flag} {port} is {earlier} too: each listener needs its own port")
        return self

    @model_validator(mode="after")
    def _one_loop_polls(self) -> Settings:
        """Several workers' loops polling take the cores from each other and from the clients,
        so unless it is asked for, workers do not poll (docs/design-notes.md)."""
        if self.workers > 1 and "busy_poll_us" not in self.model_fields_set:
            self.busy_poll_us = 0
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


class ConfigFileSource(PydanticBaseSettingsSource):
    """The TOML file named by `--config` or `VAE_CONFIG` (the sources before this one: its path is
    known by the time it runs). Every key must be a setting and every value valid for it, checked
    here so that the one-line error names the file and the key, not a flag the operator never gave.
    TOML, read by the standard library (tomllib): YAML would add PyYAML to the server's dependencies."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if path is None:
            return {}
        path = Path(path)
        where = f"--config / VAE_CONFIG {path}"
        if not path.is_file():
            raise SettingsError(f"{where}: not a readable file")
        try:
            text = _read_bounded(path).decode()
            data = tomllib.loads(text)
        except _TooLarge:
            raise SettingsError(f"{where}: over {MAX_CONFIG_BYTES} bytes; not a config file") from None
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{where}: not valid TOML ({exc})") from None
        except RecursionError:  # tomllib parses arrays and inline tables recursively
            raise SettingsError(f"{where}: nested too deeply") from None
        except OSError as exc:
            raise SettingsError(f"{where}: cannot be read ({exc.strerror or exc})") from None
        fields = self.settings_cls.model_fields
        for key, value in data.items():
            if key == "config" or key not in fields:
                hint = f" (did you mean {key.replace('-', '_')}?)" if key.replace("-", "_") in fields else ""
                raise SettingsError(f"{path}: {_shown(key)}: not a setting{hint}")
            field = fields[key]
            try:
                field_type: Any = Annotated[field.annotation, field]  # built at run time: no static type
                TypeAdapter(field_type).validate_python(value)
            except ValidationError as exc:
                message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise SettingsError(f"{path}: {key}: {message} (got {_shown(value, plain=False)})") from None
        return data


class _TooLarge(Exception):
    pass


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, read no further than MAX_CONFIG_BYTES: its size as stat gives it can be
    wrong (a /proc file says 0) or out of date. Opened without blocking, so that a FIFO put in its
    place after the check is refused, not waited on."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise OSError(f"{path} is not a regular file")
        if status.st_size > MAX_CONFIG_BYTES:
            raise _TooLarge
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _TooLarge
    return data


_PLAIN = re.compile(r"[A-Za-z0-9_.-]+")


def _shown(value: object, plain: bool = True, limit: int = 80) -> str:
    """A key (`plain`: as is when it is a plain name) or a value from the file as an error shows
    it: on one line (TOML keys may hold newlines), and short."""
    text = value if plain and isinstance(value, str) and _PLAIN.fullmatch(value) else repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# --help's sections, in this order, each with what it is about. A flag is listed under its group's
# section; the metrics endpoint's, under observability (_OBSERVABILITY), beside where tracing is set.
HELP_SECTIONS: tuple[tuple[str, str, type[_Group] | None], ...] = (
    (
        "server",
        "The gRPC server: where it listens, its processes and connections, the drain.",
        NetworkSettings,
    ),
    (
        "HTTP",
        "The HTTP front end beside gRPC: KServe v2 REST, the /v1 API and /docs, the playground.",
        HttpSettings,
    ),
    ("batching", "How requests to one graph are merged into ONNX Runtime runs.", BatchingSettings),
    ("limits", "What one request may ask for, and how many are handled at once.", LimitSettings),
    (
        "model repository",
        "Which models are served from where, on what device; new versions.",
        RepositorySettings,
    ),
    ("TLS", "TLS for gRPC and HTTP: off unless a certificate and key are given.", TLSSettings),
    (
        "observability",
        "Prometheus /metrics on a port of its own. Traces: OpenTelemetry's OTEL_* variables\n"
        "(off unless OTEL_TRACES_EXPORTER or an OTLP endpoint is set).",
        None,
    ),
    (
        "logging",
        "What the process logs, and how. grpc's own tracing: GRPC_VERBOSITY, GRPC_TRACE.",
        LogSettings,
    ),
)
_OBSERVABILITY = ("metrics_host", "metrics_port")
# What pydantic-settings appends to a setting without a default value; each such setting's help
# says what leaving it unset means instead.
_NO_DEFAULT = (" (default: None)", " (default factory: list)")


def section_of(name: str) -> str | None:
    """The --help section of a setting (HELP_SECTIONS' title), None for --config."""
    if name in _OBSERVABILITY:
        return "observability"
    return next((title for title, _, group in HELP_SECTIONS if group and name in group.model_fields), None)


def _add_argument_in_section() -> Callable[..., argparse.Action]:
    """pydantic-settings' hook for adding each flag (its `add_argument_method`): every setting's flag
    goes into an argparse group, its help section, so that --help lists them by section."""
    groups: dict[str, argparse._ArgumentGroup] = {}

    def add_argument(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> argparse.Action:
        help_text = kwargs.get("help")
        if isinstance(help_text, str):
            for suffix in _NO_DEFAULT:
                help_text = help_text.replace(suffix, "")
            kwargs["help"] = help_text
        section = section_of(kwargs.get("dest", ""))
        if section is None:  # --help, --config
            return parser.add_argument(*names, **kwargs)
        if not groups:  # all at once, so they are listed in HELP_SECTIONS' order
            groups.update(
                {title: parser.add_argument_group(title, about) for title, about, _ in HELP_SECTIONS}
            )
        return groups[section].add_argument(*names, **kwargs)

    return add_argument


def parse_args(args: list[str]) -> Settings:
    """`vae-serve`'s command line (with --help and --version, which exit 0) over the environment
    and the config file. Raises ValidationError or SettingsError; describe_error makes them one line."""
    source: CliSettingsSource[argparse.ArgumentParser] = CliSettingsSource(
        Settings, add_argument_method=_add_argument_in_section()
    )
    source.root_parser.description = inspect.cleandoc(Settings.__doc__ or "")
    # The flags are listed by section below; a usage line naming every one of them would be longer.
    source.root_parser.usage = "%(prog)s [-h] [--version] [--config PATH] [flags by section, below]"
    source.root_parser.add_argument(
        "--version", action="version", version=f"vae-serve {__version__}", help="Print the version, exit."
    )
    return CliApp.run(Settings, cli_args=args, cli_settings_source=source)


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


def _overlap(host: str, other: str) -> bool:
    """Whether listeners on these two addresses would share a port (a wildcard takes every address)."""
    return host == other or host in ("", "0.0.0.0", "::") or other in ("", "0.0.0.0", "::")
