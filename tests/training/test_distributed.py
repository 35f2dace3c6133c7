"""The same trainer under torchrun: two gloo processes on the CPU end with identical weights."""

import re
import subprocess
import sys


def test_two_process_torchrun_ranks_agree(fashion_mnist_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "vae_serve.training.cli",
        "--data-dir",
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
