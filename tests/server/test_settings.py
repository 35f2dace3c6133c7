"""Settings from flags and VAE_* variables; bad values become one line naming flag and variable."""

import pytest

from vae_serve.server.settings import Settings, SettingsError, ValidationError, describe_error


def parse(*args: str) -> Settings:
    from pydantic_settings import CliApp

    return CliApp.run(Settings, cli_args=list(args))


def test_defaults():
    s = parse()
    assert (s.port, s.metrics_port, s.device, s.reflection, s.model) == (
        50051,
        8002,
        "auto",
        True,
        "fashion-vae",
    )
    assert (s.model_repository / "fashion-vae" / "1" / "model.json").is_file()


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
    ],
)
def test_bad_values_are_one_line(args, message):
    with pytest.raises((ValidationError, SettingsError)) as caught:
        parse(*args)
    line = describe_error(caught.value)
    assert message in line
    assert "\n" not in line


def test_tls_files_must_exist(tmp_path):
    with pytest.raises(ValidationError) as caught:
        parse("--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem"))
    assert "TLS file" in describe_error(caught.value)
