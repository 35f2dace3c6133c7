"""`vae-serve`: parse settings, configure logging, serve. Start-up problems end in one line.
`vae-serve hash-token`: the admin token file's line for a token (protocol/admin.py)."""

from __future__ import annotations

import argparse
import getpass
import signal
import sys
from typing import TYPE_CHECKING, TextIO

from vae_serve import require_extra

if TYPE_CHECKING:
    import logging

    from .settings import LogSettings

__all__ = ["LOG_FORMAT", "OWN_LOGGER", "configure_logging", "hash_token", "log_handler", "main"]

OWN_LOGGER = "vae_serve"  # the parent of every module's logger and the access log: what --log-level sets

# `request_id`: the call's (x-request-id, or one made up), "-" outside any call.
LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] [%(process)d] %(name)s: %(message)s"
# --log-format json: these, a "timestamp", and whatever a line adds (request_id; trace_id and
# span_id inside a traced call; the access log's fields).
JSON_FIELDS = ["levelname", "name", "message", "process"]
JSON_RENAMED = {"levelname": "level", "name": "logger"}

# What server/ imports beyond the client's dependencies: the `server` extra in pyproject.toml.
SERVER_MODULES = (
    "onnxruntime",
    "grpc_reflection",
    "prometheus_client",
    "pydantic",
    "pydantic_settings",
    "fastapi",
    "starlette",
    "uvicorn",
    "httptools",
    "orjson",
    "python_multipart",
    "fastapi_offline",
    "opentelemetry",
    "pythonjsonlogger",
    "obstore",
)


def configure_logging(settings: LogSettings) -> None:
    """The process's logging (workers inherit it): every line says which request it belongs to;
    `--access-log` adds a line per request. `--log-level` is vae-serve's own: other libraries'
    debug lines (grpc's internals above all) would bury ours, and grpc has switches of its own for
    them (GRPC_VERBOSITY, GRPC_TRACE), so their loggers stay at info or above."""
    import logging

    from .telemetry import observe

    level = logging.getLevelName(settings.log_level.upper())
    logging.basicConfig(level=max(level, logging.INFO), handlers=[log_handler(settings)], force=True)
    logging.getLogger(OWN_LOGGER).setLevel(level)
    observe.set_access_log(settings.access_log)


def log_handler(settings: LogSettings, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing to `stream` (stderr) in `--log-format`: text, or one JSON object a line
    with the trace and span ids inside a traced call."""
    import logging

    from .protocol.calls import RequestIdFilter

    handler = logging.StreamHandler(stream)
    if settings.log_format == "json":
        from pythonjsonlogger.orjson import OrjsonFormatter

        handler.setFormatter(OrjsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMED, timestamp=True))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    return handler


def hash_token(argv: list[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """`vae-serve hash-token [--new] [--name NAME]`: the token file's line for the token on stdin
    (asked for without echo at a terminal), or for a fresh random one, printed first. A
    subcommand of its own, parsed apart from the settings; it needs nothing of the server extra."""
    from .protocol.admin import MAX_TOKEN, NAME, check_token, hash_line, new_token

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    parser = argparse.ArgumentParser(
        prog="vae-serve hash-token",
        description="Print the --admin-token-file line (sha256:<hex> [name]) for the token read from "
        "stdin, or with --new for a fresh random token, printed on the line before.",
    )
    parser.add_argument("--new", action="store_true", help="Make a random token (256 bits); print it first.")
    parser.add_argument("--name", help="Who holds the token: appended to the line, named in the log.")
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if options.name is not None and not NAME.fullmatch(options.name):
            raise ValueError("--name is letters, digits, '.', '_', '@', '+', '-' (at most 64)")
        if options.new:
            token = new_token()
        elif stdin.isatty():
            token = getpass.getpass("token: ", stream=sys.stderr)
        else:
            token = stdin.read(MAX_TOKEN + 2).strip()  # a trailing newline is no part of it
        line = hash_line(check_token(token), options.name)
    except ValueError as exc:
        print(f"vae-serve hash-token: error: {exc}", file=sys.stderr)
        return 2
    if options.new:
        print(token, file=stdout)
    print(line, file=stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hash-token"]:  # not a setting: the settings take no positional arguments
        return hash_token(args[1:])
    # SIGHUP means "look for new versions now", but only once a server can: until its handler is
    # in place (app.run, or the supervisor's) a SIGHUP must not kill the process (exit 129) while it
    # imports, parses or loads the model. Hence first, before the heavy imports below.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # A client-only install has this command but not what it imports: say so in one line.
    require_extra("vae-serve", "server", SERVER_MODULES)

    from vae_serve.errors import ServingError, StartError

    from .ports import check_ports_free
    from .settings import SettingsError, ValidationError, describe_error, parse_args

    try:
        settings = parse_args(args)
    except (ValidationError, SettingsError) as exc:
        print(f"vae-serve: error: {describe_error(exc)}", file=sys.stderr)
        return 2
    try:
        check_ports_free(settings)  # before the server's imports and the model load: at once
    except StartError as exc:
        print(f"vae-serve: error: {exc}", file=sys.stderr)
        return 1
    configure_logging(settings.logs)
    from .telemetry import tracing

    try:
        tracing.check()
    except tracing.TracingError as exc:
        print(f"vae-serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        if settings.workers > 1:
            from .workers import StartFailure, run_workers  # before prometheus_client is imported anywhere

            try:
                return run_workers(settings)
            except StartFailure as exc:
                print(f"vae-serve: error: {exc}", file=sys.stderr)
                return 1
        from .app import run
        from .grpc import busy_poll

        tracing.configure()  # workers make their own, after the fork
        try:
            busy_poll.run(run(settings), settings.network.busy_poll_us)
        finally:
            tracing.shutdown()  # what is buffered goes out before the exit
    except (StartError, ServingError) as exc:
        print(f"vae-serve: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
