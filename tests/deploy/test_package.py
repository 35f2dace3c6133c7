"""The wheel a deployment installs holds every module and the bundled model (an editable
install, as in the test venv, would hide a module missing from the package list)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from support import REPO_ROOT

# Source folder -> where its modules live in the wheel.
LAYOUT = {"vae_serve": "vae_serve", "server": "vae_serve/server", "client": "vae_serve/client",
          "training": "vae_serve/training", "models": "vae_serve/models"}  # fmt: skip


def test_wheel_contains_every_module_and_the_default_model(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("vae_serve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, target in LAYOUT.items():
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".onnx", ".json"} and "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(REPO_ROOT / folder).as_posix()}")
    missing = expected - names
    assert not missing, sorted(missing)
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"vae_serve"}  # no bare server/client/training package
