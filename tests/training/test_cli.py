"""`vae-train` as a person meets it: bad input ends in one line and a non-zero exit."""

import gzip
import subprocess
import sys

import pytest


def run_train(*args: str, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vae_serve.training.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def assert_one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert expected in errors[0]


def test_missing_data_dir(tmp_path):
    done = run_train("--data-dir", str(tmp_path / "absent"), cwd=tmp_path)
    assert_one_line_error(done, "data directory not found; install Debian's package")


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\x00\x00\x08\x03" + b"\x00" * 7, "truncated header"), (b"garbage!" * 4, "not an IDX file")],
)
def test_bad_idx_file(tmp_path, content, expected):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(content))
    done = run_train("--data-dir", str(tmp_path), cwd=tmp_path)
    assert_one_line_error(done, f"train-images-idx3-ubyte.gz: {expected}")


def test_bad_hidden_sizes(tmp_path):
    done = run_train("--hidden", "512,x", cwd=tmp_path)
    assert done.returncode == 2
    assert "expected comma-separated layer widths" in done.stderr
