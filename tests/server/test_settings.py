"""Settings from flags, VAE_* variables and a config file; bad values become one line naming flag and
variable (or file and key); each setting stated once, in the group the components take."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from support import DEFAULT_VERSION, REPOSITORY, start_server_ports

import vae_serve
from vae_serve.server.app import VaeServer
from vae_serve.server.models.model import load_model
from vae_serve.server.models.reload import RepositoryWatcher
from vae_serve.server.models.repository import resolve
from vae_serve.server.models.selection import choose_models
from vae_serve.server.models.versions import ServedVersions
from vae_serve.server.protocol import dataplane
from vae_serve.server.protocol.dataplane import DataPlane
from vae_serve.server.runners.batching import BatchingRunner
from vae_serve.server.runners.runner import InlineRunner
from vae_serve.server.settings import (
    BatchingSettings,
    HttpSettings,
    LimitSettings,
    LogSettings,
    NetworkSettings,
    RepositorySettings,
    Settings,
    SettingsError,
    TLSSettings,
    ValidationError,
    describe_error,
    parse_args,
)
from vae_serve.server.telemetry.metrics import Metrics

GROUPS = (
    NetworkSettings,
    HttpSettings,
    TLSSettings,
    RepositorySettings,
    BatchingSettings,
    LimitSettings,
    LogSettings,
)
SERVE = [sys.executable, "-m", "vae_serve.server.cli"]


def parse(*args: str) -> Settings:
    return parse_args(list(args))


def test_defaults():
    s = parse()
    assert (s.port, s.metrics_port, s.device, s.reflection, s.model) == (50051, 8002, "auto", True, [])
    assert (Path(s.model_repository) / "fashion-vae" / DEFAULT_VERSION / "model.json").is_file()
    assert choose_models(s.repository) == {"fashion-vae": None}  # every model there: the bundled one


def test_flags_and_environment(monkeypatch):
    monkeypatch.setenv("VAE_PORT", "6000")
    monkeypatch.setenv("VAE_REFLECTION", "false")
    s = parse("--max-batch-size", "32", "--device", "cpu")
    assert (s.port, s.reflection, s.max_batch_size, s.device) == (6000, False, 32, "cpu")
    assert parse("--reflection").reflection is True
    assert parse("--port", "7000").port == 7000  # a flag beats the environment


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port / VAE_PORT: Input should be less than or equal to 65535 (got '70000')"),
        (["--device", "gpu"], "--device / VAE_DEVICE: Input should be 'auto', 'cpu' or 'cuda'"),
        (
            ["--max-batch-size", "0"],
            "--max-batch-size / VAE_MAX_BATCH_SIZE: Input should be greater than or equal to 1",
        ),
        (
            ["--intra-op-threads", "many"],
            "--intra-op-threads / VAE_INTRA_OP_THREADS: Input should be a valid integer",
        ),
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["--port", "9000", "--metrics-port", "9000"], "--metrics-port 9000 is --port too"),
        (["--http-port", "9001", "--metrics-port", "9001"], "--metrics-port 9001 is --http-port too"),
    ],
)
def test_bad_values_are_one_line(args, message):
    with pytest.raises((ValidationError, SettingsError)) as caught:
        parse(*args)
    line = describe_error(caught.value)
    assert message in line
    assert "\n" not in line


# --http-host and --metrics-host follow --host unless given.


@pytest.fixture
def no_host_variables(monkeypatch):
    for name in ("VAE_HOST", "VAE_HTTP_HOST", "VAE_METRICS_HOST"):  # tests/conftest.py sets one
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_http_and_metrics_listen_where_grpc_does_unless_told(no_host_variables, tmp_path):
    s = parse()
    assert (s.host, s.http_host, s.metrics_host) == ("0.0.0.0",) * 3
    s = parse("--host", "127.0.0.1")
    assert (s.http_host, s.metrics_host) == ("127.0.0.1", "127.0.0.1")
    assert (s.http_server.http_host, s.network.metrics_host) == ("127.0.0.1", "127.0.0.1")
    s = parse("--host", "127.0.0.1", "--http-host", "0.0.0.0", "--metrics-host", "::1")
    assert (s.host, s.http_host, s.metrics_host) == ("127.0.0.1", "0.0.0.0", "::1")
    no_host_variables.setenv("VAE_HOST", "127.0.0.2")
    assert (parse().http_host, parse().metrics_host) == ("127.0.0.2", "127.0.0.2")
    no_host_variables.setenv("VAE_METRICS_HOST", "0.0.0.0")
    assert (parse().http_host, parse().metrics_host) == ("127.0.0.2", "0.0.0.0")
    assert parse("--host", "127.0.0.3").metrics_host == "0.0.0.0"  # given, though under the flag
    no_host_variables.delenv("VAE_HOST")
    no_host_variables.delenv("VAE_METRICS_HOST")
    config = tmp_path / "vae.toml"
    config.write_text('host = "127.0.0.4"\n')
    assert parse("--config", str(config)).http_host == "127.0.0.4"
    config.write_text('host = "127.0.0.4"\nhttp_host = "0.0.0.0"\n')
    assert parse("--config", str(config), "--host", "127.0.0.5").http_host == "0.0.0.0"
    assert Settings(host="127.0.0.6").http_server.http_host == "127.0.0.6"


def _listening(port: int) -> set[str]:
    """The addresses something listens on at TCP `port`, from /proc/net (IPv4-mapped IPv6
    addresses as IPv4, as gRPC binds them)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
            ip = ipaddress.ip_address(raw)
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found


def test_one_port_on_two_addresses_is_two_listeners(no_host_variables):
    settings = parse(
        "--host", "127.0.0.1", "--port", "9000", "--metrics-host", "127.0.0.2", "--metrics-port", "9000"
    )
    assert (settings.port, settings.metrics_port) == (9000, 9000)
    assert parse("--no-http", "--port", "9000", "--http-port", "9000").http_port == 9000


def test_host_alone_keeps_every_port_on_that_address(no_host_variables):
    ports = ("--port", "0", "--http-port", "0", "--metrics-port", "0")
    pattern = r"serving on \S+:(\d+) .*HTTP on \S+:(\d+), metrics on http://\S+:(\d+)"
    proc, found = start_server_ports(["-m", "vae_serve.server.cli", "--host", "127.0.0.1", *ports], pattern)
    try:
        for port in found:
            assert _listening(port) == {"127.0.0.1"}, port
    finally:
        proc.terminate()
        proc.wait(30)


def test_tls_files_must_exist(tmp_path):
    with pytest.raises(ValidationError) as caught:
        parse("--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem"))
    assert "TLS file" in describe_error(caught.value)


# The config file: flags > VAE_* > file > defaults.


def test_config_file_sits_under_environment_and_flags(tmp_path, monkeypatch):
    config = tmp_path / "vae.toml"
    config.write_text('max_batch_size = 32\nport = 6001\nmetrics_port = 6002\nqueue_delay_policy = "fixed"\n')
    s = parse("--config", str(config))
    assert (s.max_batch_size, s.port, s.metrics_port, s.queue_delay_policy) == (32, 6001, 6002, "fixed")
    assert s.max_queue_rows == 16384  # not in the file: the default
    monkeypatch.setenv("VAE_PORT", "7000")
    monkeypatch.setenv("VAE_METRICS_PORT", "7001")
    s = parse("--config", str(config), "--metrics-port", "9000")
    assert (s.max_batch_size, s.port, s.metrics_port) == (32, 7000, 9000)  # file < env < flag
    assert s.batching.max_batch_size == 32  # and the groups the components take carry it


def test_config_file_from_the_environment(tmp_path, monkeypatch):
    config = tmp_path / "vae.toml"
    config.write_text("keep_versions = 3\nretire_after_s = 2.5\n")
    monkeypatch.setenv("VAE_CONFIG", str(config))
    assert (parse().keep_versions, Settings().repository.retire_after_s) == (3, 2.5)
    assert parse("--keep-versions", "4").keep_versions == 4


def test_config_file_takes_part_in_cross_checks(tmp_path):
    """A value from the file counts as given: it is checked with the others, not silently lowered."""
    config = tmp_path / "vae.toml"
    config.write_text("max_request_rows = 100\nmax_queue_rows = 100\nmax_batch_size = 8\n")
    assert parse("--config", str(config)).max_samples == 100  # the default follows the row limit
    config.write_text("max_request_rows = 100\nmax_queue_rows = 100\nmax_batch_size = 8\nmax_samples = 200\n")
    with pytest.raises(ValidationError) as caught:
        parse("--config", str(config))
    assert "--max-samples 200 exceeds --max-request-rows 100" in describe_error(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "{path}: bogus: not a setting"),
        ("max-batch-size = 32\n", "{path}: max-batch-size: not a setting (did you mean max_batch_size?)"),
        ('config = "other.toml"\n', "{path}: config: not a setting"),
        ("[server]\nport = 1\n", "{path}: server: not a setting"),
        (
            "max_batch_size = 0\n",
            "{path}: max_batch_size: Input should be greater than or equal to 1 (got 0)",
        ),
        ('device = "gpu"\n', "{path}: device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')"),
        ('port = "many"\n', "{path}: port: Input should be a valid integer"),
        ("max_batch_size = \n", "--config / VAE_CONFIG {path}: not valid TOML"),
    ],
)
def test_bad_config_file_is_one_line_naming_file_and_key(tmp_path, text, message):
    config = tmp_path / "vae.toml"
    config.write_text(text)
    with pytest.raises((ValidationError, SettingsError)) as caught:
        parse("--config", str(config))
    line = describe_error(caught.value)
    assert message.format(path=config) in line
    assert "\n" not in line


@pytest.mark.parametrize("kind", ["missing", "directory", "huge"])
def test_config_that_is_no_file_is_refused_unread(tmp_path, kind):
    path = tmp_path / "vae.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "huge":
        path.write_text("# padding\n" * 200_000)  # 2 MB: over the bound, never parsed
    with pytest.raises(SettingsError) as caught:
        parse("--config", str(path))
    line = describe_error(caught.value)
    assert line.startswith(f"--config / VAE_CONFIG {path}: ") and "\n" not in line


DEEP = 2000


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"port = " + b"[" * DEEP + b"]" * DEEP + b"\n", "nested too deeply"),
        (b"port = " + b"{a = " * DEEP + b"1" + b"}" * DEEP + b"\n", "nested too deeply"),
        (b"a" + b".a" * DEEP + b" = 1\n", "not a setting"),  # dotted keys: deep, without recursion
        (b"port = 1\n# \xff\xfe\n", "not UTF-8 text"),
        (b"\x00\x01\x02 binary", "not valid TOML"),
    ],
    ids=["deep arrays", "deep inline tables", "deep dotted keys", "not UTF-8", "binary"],
)
def test_an_unreadable_config_is_one_line(tmp_path, content, says):
    config = tmp_path / "vae.toml"
    config.write_bytes(content)
    with pytest.raises(SettingsError) as caught:
        parse("--config", str(config))
    line = describe_error(caught.value)
    assert says in line and "\n" not in line and len(line) < 300 + len(str(config))


def test_a_deeply_nested_value_that_parses_is_one_short_line(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text("port = " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(SettingsError) as caught:
        parse("--config", str(config))
    line = describe_error(caught.value)
    assert line.startswith(f"{config}: port: ") and "\n" not in line and len(line) < 200 + len(str(config))


def test_a_config_is_read_no_further_than_its_bound(tmp_path, monkeypatch):
    """A file whose size says less than it holds (a /proc file says 0; a growing one, what it had)
    is still not read whole."""
    config = tmp_path / "vae.toml"
    config.write_text("# padding\n" * 200_000)  # 2 MB
    real_fstat = os.fstat

    def says_empty(fd: int) -> os.stat_result:
        fields = list(real_fstat(fd))
        fields[6] = 0  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", says_empty)
    with pytest.raises(SettingsError) as caught:
        parse("--config", str(config))
    assert "over 1048576 bytes" in describe_error(caught.value)


def test_a_deep_config_stops_the_command_in_one_line(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text("port = " + "[" * DEEP + "]" * DEEP + "\n")
    done = subprocess.run([*SERVE, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"vae-serve: error: --config / VAE_CONFIG {config}: nested too deeply"
    ]


def test_bad_config_stops_the_command_in_one_line(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text("max_batch_sise = 32\n")
    done = subprocess.run([*SERVE, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"vae-serve: error: {config}: max_batch_sise: not a setting"]


# --version and --help.


def test_version_prints_and_exits_zero():
    done = subprocess.run([*SERVE, "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"vae-serve {vae_serve.__version__}\n", "")
    assert vae_serve.__version__ == "0.3.0"


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exited:
        parse("--help")
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "null" not in text and "{str" not in text and "JSON" not in text
    for flag in ("--retire-after-s", "--config", "--version", "--max-batch-size", "--no-reflection"):
        assert flag in text
    assert "\n    from ONNX" not in text  # the description is dedented
    for variable in (
        "VAE_RETIRE_AFTER_S",
        "VAE_CONFIG",
        "VAE_MAX_BATCH_SIZE",
    ):  # each flag names its variable
        assert variable in text


SECTIONS = ("server", "HTTP", "batching", "limits", "model repository", "TLS", "observability", "logging")


def help_sections(text: str) -> dict[str, list[str]]:
    """--help's sections (argparse groups: a title line at the margin ending in ':'), each with
    the flags listed in it."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text[text.index("\noptions:") :].splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = sections.setdefault(line[:-1], [])
        elif current is not None and line.startswith("  -"):  # `  -h, --help`, `  --http, --no-http`
            current.append(next(word for word in line.split() if word.startswith("--")).rstrip(","))
    return sections


def test_help_lists_every_flag_once_in_its_section(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    text = capsys.readouterr().out
    sections = help_sections(text)
    assert list(sections) == ["options", *SECTIONS]
    assert sections["options"] == ["--help", "--config", "--version"]
    listed = [flag for flags in sections.values() for flag in flags]
    flags = {f"--{name.replace('_', '-')}" for name in Settings.model_fields}
    assert sorted(listed) == sorted({*flags, "--help", "--version"})  # each flag once
    assert sections["observability"] == ["--metrics-port", "--metrics-host"]
    assert "--http-cors-origins" in sections["HTTP"] and "--tls-client-ca" in sections["TLS"]
    assert "--max-queue-delay-us" in sections["batching"] and "--max-samples" in sections["limits"]
    assert "--log-level" in sections["logging"] and "--model-version" in sections["model repository"]
    assert "--workers" in sections["server"]
    description = " ".join(text.split("\n\n")[1].split())
    assert "over gRPC" in description and "HTTP/REST" in description
    assert "(default: None)" not in text and "default factory" not in text


def test_log_level_is_vae_serves_own_and_leaves_grpc_alone(monkeypatch):
    """--log-level debug: vae-serve's loggers at debug, every other library's (grpc's) at info,
    and grpc's own switches untouched."""
    from vae_serve.server.cli import configure_logging

    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    monkeypatch.delenv("GRPC_TRACE", raising=False)
    root, own = logging.getLogger(), logging.getLogger("vae_serve")
    saved = (root.level, list(root.handlers), own.level)
    try:
        configure_logging(LogSettings(log_level="debug"))
        assert logging.getLogger("vae_serve.server.app").isEnabledFor(logging.DEBUG)
        for name in ("grpc", "grpc._cython.cygrpc", "grpc.aio", "asyncio", "uvicorn"):
            assert logging.getLogger(name).getEffectiveLevel() == logging.INFO, name
        assert "GRPC_VERBOSITY" not in os.environ and "GRPC_TRACE" not in os.environ
        configure_logging(LogSettings(log_level="warning"))
        assert not logging.getLogger("vae_serve.server.app").isEnabledFor(logging.INFO)
        assert logging.getLogger("grpc").getEffectiveLevel() == logging.WARNING
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        own.setLevel(saved[2])


# Each setting stated once: in one group, which the components take.


def test_every_setting_is_in_exactly_one_group():
    grouped = [name for group in GROUPS for name in group.model_fields]
    assert len(grouped) == len(set(grouped))
    assert set(Settings.model_fields) == {*grouped, "config"}
    for group in GROUPS:
        assert issubclass(Settings, group)  # inherited: type, bounds, default and help stated once
        for name, field in group.model_fields.items():
            assert Settings.model_fields[name].default == field.default


def test_groups_are_frozen_views_of_the_settings():
    s = parse("--max-batch-size", "7", "--max-request-rows", "300", "--retire-after-s", "1.5")
    assert s.batching == BatchingSettings(max_batch_size=7)
    assert s.limits.max_samples == 300  # the cross-check ran on Settings, the group carries its result
    assert s.repository.retire_after_s == 1.5
    with pytest.raises(ValidationError):
        s.batching.max_batch_size = 8  # type: ignore[misc]


def test_one_process_polls_and_several_workers_do_not_unless_asked(monkeypatch):
    ports = ("--port", "6000", "--metrics-port", "6001", "--http-port", "6002")
    assert parse().network.busy_poll_us == 500
    assert parse("--workers", "2", *ports).network.busy_poll_us == 0
    assert parse("--workers", "2", *ports, "--busy-poll-us", "300").network.busy_poll_us == 300
    monkeypatch.setenv("VAE_BUSY_POLL_US", "200")
    assert parse("--workers", "2", *ports).network.busy_poll_us == 200


def test_limits_is_gone_and_components_take_the_groups():
    assert not hasattr(dataplane, "Limits")

    def takes(cls: type, *groups: type) -> None:
        hints = typing.get_type_hints(cls.__init__)
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert [hints[p] for p in params if hints[p] in GROUPS] == list(groups), cls
        settings_params = [
            p for p in inspect.signature(cls.__init__).parameters.values() if hints.get(p.name) in GROUPS
        ]
        assert all(p.default is inspect.Parameter.empty for p in settings_params), cls  # no restated defaults

    takes(DataPlane, BatchingSettings, LimitSettings, RepositorySettings)
    takes(BatchingRunner, BatchingSettings)
    takes(InlineRunner, BatchingSettings)
    takes(ServedVersions, RepositorySettings)
    takes(RepositoryWatcher, RepositorySettings)


def test_the_server_hands_each_component_its_settings():
    s = Settings(
        model_repository=REPOSITORY,
        max_batch_size=3,
        max_request_rows=500,
        max_queue_rows=600,
        keep_versions=4,
    )
    plane = VaeServer(s, Metrics()).dataplane  # built, not started: no port, no model
    assert plane.batching == s.batching and plane.batching.max_queue_rows == 600
    assert plane.limits == s.limits and plane.limits.max_request_rows == 500
    assert plane.served.keep == 4


# A replaced version stays for --retire-after-s, not --drain-grace-s.


def _retire_first_of_two(settings: Settings) -> bool:
    """Serve the default model twice as the same version, so the first is retired: True once it closes."""
    plane = VaeServer(settings, Metrics()).dataplane
    version = resolve(REPOSITORY, "fashion-vae")

    async def scenario() -> bool:
        closed = asyncio.Event()
        plane.serve(load_model(version, "cpu", 1))
        first = plane.served.get()
        close = first.encoder.close

        def closing() -> None:
            close()
            closed.set()

        first.encoder.close = closing  # type: ignore[method-assign]
        plane.serve(load_model(version, "cpu", 1))
        assert plane.served.get() is not first
        try:
            await asyncio.wait_for(closed.wait(), 30)  # a hang guard, not a timing bound
        except TimeoutError:
            return False
        finally:
            plane.close()
        return True

    return asyncio.run(scenario())


def test_a_replaced_version_closes_after_retire_after_s_not_the_drain_grace(caplog):
    caplog.set_level(logging.INFO, logger="vae_serve.server.models.versions")
    s = Settings(model_repository=REPOSITORY, retire_after_s=0, drain_grace_s=3600)
    assert _retire_first_of_two(s)
    assert f"retiring version {DEFAULT_VERSION} after 0.0 s" in caplog.text


def test_retire_after_s_is_its_own_setting():
    s = Settings(model_repository=REPOSITORY, retire_after_s=120, drain_grace_s=0)
    assert VaeServer(s, Metrics()).dataplane.served.retire_after_s == 120
    assert Settings(model_repository=REPOSITORY).retire_after_s == 10.0
    with pytest.raises(ValidationError):
        Settings(retire_after_s=-1)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('"a\\nb" = 1\n', "'a\\nb': not a setting"),  # a quoted key may hold a newline: still one line
        (f'device = "{"m" * 5000}"\n', "(got 'mmmm"),  # a huge value is cut short
        (f'"{"k" * 5000}" = 1\n', "kkkk...: not a setting"),
    ],
)
def test_hostile_config_keys_and_values_stay_one_short_line(tmp_path, text, shown):
    config = tmp_path / "vae.toml"
    config.write_text(text)
    try:
        parse("--config", str(config))
    except (ValidationError, SettingsError) as exc:
        line = describe_error(exc)
    else:
        pytest.fail("accepted")
    assert shown in line and "\n" not in line and len(line) < 200 + len(str(config))
