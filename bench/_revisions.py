"""A git revision of vae-serve, importable beside the working tree's for an A/B benchmark.

The revision is checked out with `git worktree` into a temporary folder and laid out as the
installed package is (pyproject's package-dir: `vae_serve.server` is `server/`, ...). Put the
returned folder first on PYTHONPATH and start the server from a directory without a `vae_serve/`
of its own (not the repository root): `import vae_serve` then gives that revision, ahead of this
venv's editable install of the working tree. The venv, so every dependency, is shared.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ROOT", "importable"]

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {"server": "server", "client": "client", "training": "training", "models": "models"}


def importable(revision: str, stack: contextlib.ExitStack) -> Path:
    """A PYTHONPATH entry holding `revision`'s `vae_serve`; removed when `stack` closes."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vae-revision-")))
    checkout = folder / "checkout"
    git = ["git", "-C", str(ROOT), "worktree"]
    subprocess.run([*git, "add", "-q", "--detach", str(checkout), revision], check=True)
    stack.callback(subprocess.run, [*git, "remove", "--force", str(checkout)])
    package = folder / "path" / "vae_serve"
    package.mkdir(parents=True)
    for entry in (checkout / "vae_serve").iterdir():
        (package / entry.name).symlink_to(entry)
    for name, source in LAYOUT.items():
        (package / name).symlink_to(checkout / source)
    return folder / "path"
