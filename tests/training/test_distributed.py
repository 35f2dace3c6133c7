"""The same trainer under torchrun: two gloo processes on the CPU end with identical weights."""

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_process_torchrun_ranks_agree(fashion_mnist_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "vae_serve.training.cli",
        "--data",
        str(fashion_mnist_dir),
        "--limit",
        "256",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--hidden",
        "32",
        "--latent-dim",
        "4",
        "--iwae-k",
        "0",
        "--no-export",
        "--checkpoint",
        str(tmp_path / "last.pt"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d)/2: parameter digest ([0-9a-f]{64})", done.stderr))
    assert set(digests) == {"0", "1"}, done.stderr[-3000:]
    assert digests["0"] == digests["1"]
    # Both ranks saw the whole slice (DistributedSampler gives each its own half of every epoch),
    # and rank 0 wrote the checkpoint.
    assert "rank 0/2 on cpu: 256 train / 256 test images" in done.stderr
    assert "rank 1/2 on cpu: 256 train / 256 test images" in done.stderr
    assert (tmp_path / "last.pt").is_file()


# rank 0 alone evaluates and publishes; when that fails, the other rank must not be left waiting at
# the collective rank 0 never reaches. The real `vae-train` runs, with only the publishing replaced
# by one that fails as a full disk or a broken exporter would, and rank 0 at its slowest after the
# failure: it leaves the closing barrier only when torchrun stops it, which it does once the other
# rank has ended. What rank 0 says must be said by then.
FAILING_PUBLISH = """
import signal
from vae_serve.training import cli

failed = False

def publish(*_args, **_kwargs):
    global failed
    failed = True
    raise {error}

def barrier(wait=cli.dist.barrier):
    wait()
    if failed:
        signal.pause()

cli.export_vae = publish
cli.dist.barrier = barrier
cli.entry()
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "message"),
    [
        # an error the command expects (an ExportError takes the same path) and one it does not
        ('OSError(28, "No space left on device")', "No space left on device"),
        ('RuntimeError("exporter crashed")', "exporter crashed"),
    ],
)
def test_rank_0_failing_to_publish_stops_every_rank(fashion_mnist_dir, tmp_path, error, message):
    script = tmp_path / "train_failing_publish.py"
    script.write_text(FAILING_PUBLISH.format(error=error))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        "--data",
        str(fashion_mnist_dir),
        "--limit",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--iwae-k",
        "0",
        "--model-repository",
        str(tmp_path / "models"),
        "--checkpoint",
        str(tmp_path / "last.pt"),
    ]
    # A hang would be a timeout here; the time it takes to fail is the time to train 64 images.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode != 0, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "Error: " in line]
    assert any(message in line and "rank 0 failed" not in line for line in errors), done.stderr[-3000:]
    stopped = "Error: rank 0 failed, so this rank stops too: "
    assert any(line.startswith(stopped) and message in line for line in errors), done.stderr[-3000:]
    assert not (tmp_path / "models" / "fashion-vae" / "1").exists()
