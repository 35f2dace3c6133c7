"""Type-check the whole `vae_serve` package with mypy (`make lint` runs this).

    python tools/typecheck.py              # pyproject.toml's [tool.mypy]
    python tools/typecheck.py --strict     # mypy's own flags may follow, to try one out

pyproject.toml's package-dir puts server/, client/ and training/ under `vae_serve`. mypy finds a
module by its name's folders, and cannot follow the editable install's import hook, so this lays
out build/typecheck/vae_serve/ as the installed package, in links to the real files, checks it
there, and reports the real files' paths.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
PACKAGE = "vae_serve"


def subpackages() -> dict[str, str]:
    """The folder of each package-dir entry directly under PACKAGE that holds code: {"server":
    "server", ...}; models/ is data, with no __init__.py."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    prefix = f"{PACKAGE}."
    return {
        name.removeprefix(prefix): folder
        for name, folder in package_dir.items()
        if name.startswith(prefix)
        and "." not in name.removeprefix(prefix)
        and (ROOT / folder / "__init__.py").is_file()
    }


def lay_out(subs: dict[str, str]) -> None:
    """TREE/PACKAGE: a link to every entry of the package's own folder, and one to each subpackage's
    folder. Laid anew each time, so that files added or removed since are seen."""
    package = TREE / PACKAGE
    shutil.rmtree(package, ignore_errors=True)  # removes the links, never what they point at
    package.mkdir(parents=True)
    for entry in (ROOT / PACKAGE).iterdir():
        if entry.name != "__pycache__" and entry.name not in subs:
            (package / entry.name).symlink_to(entry)
    for name, folder in subs.items():
        (package / name).symlink_to(ROOT / folder)


def main() -> None:
    subs = subpackages()
    lay_out(subs)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", PACKAGE]
    done = subprocess.run([*command, *sys.argv[1:]], cwd=TREE, capture_output=True, text=True)
    # mypy names files as laid out here (vae_serve/server/app.py); name them as in the repository.
    linked = re.compile(rf"^{PACKAGE}/({'|'.join(map(re.escape, subs))})/", re.MULTILINE)
    sys.stdout.write(linked.sub(lambda m: f"{subs[m.group(1)]}/", done.stdout))
    sys.stderr.write(done.stderr)
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
