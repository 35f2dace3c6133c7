"""The wheel a deployment installs holds every module and the bundled model (an editable
install, as in the test venv, would hide a module missing from the package list), and installed
without extras it is the client alone: no ONNX Runtime, no server dependencies. Building it warns
of nothing, a first `make serve` installs it as a deployment does (not editable) and without a
warning, and shows what it is installing."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from support import DEFAULT_VERSION, REPO_ROOT, start_vae_serve

from vae_serve import require_extra
from vae_serve.server.cli import SERVER_MODULES

# Source folder -> where its modules live in the wheel.
LAYOUT = {
    "vae_serve": "vae_serve",
    "server": "vae_serve/server",
    "client": "vae_serve/client",
    "training": "vae_serve/training",
    "models": "vae_serve/models",
}
# Files the package must carry: code, the bundled model, and the web playground's page and assets.
PACKAGED = {".py", ".onnx", ".json", ".html", ".js", ".css", ".svg"}
# What a client install must not hold: the server extra.
SERVER_ONLY = {
    "onnxruntime",
    "onnxruntime-gpu",
    "prometheus-client",
    "pydantic-settings",
    "grpcio-reflection",
}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel, and everything its build printed (not quieted: pip shows the backend's warnings)."""
    folder = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(folder), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (built,) = folder.glob("vae_serve-*.whl")
    return built, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(build: tuple[Path, str]) -> Path:
    return build[0]


def test_the_build_warns_of_nothing(build):
    """Every folder of data files is declared a package, so setuptools has nothing to warn about."""
    _, output = build
    assert not re.search(r"warning|would be ignored", output, re.IGNORECASE), output


def test_a_first_make_serve_installs_as_a_deployment_does_and_warns_of_nothing(tmp_path):
    """`make serve`'s own install command on a fresh checkout: not editable (setuptools warns of an
    editable install, "folders in your working directory with the same name as your package"), so
    it warns of nothing, and the installed package serves the model it carries."""
    venv = tmp_path / "venv"
    done = run("make", "--dry-run", "--no-print-directory", "-C", REPO_ROOT, f"VENV={venv}", "serve")
    assert done.returncode == 0, done.stderr
    (install,) = [line for line in done.stdout.splitlines() if re.search(r"pip install .*\[server\]", line)]
    python, *args = shlex.split(install)
    assert python == f"{venv}/bin/python" and args[:3] == ["-m", "pip", "install"], install
    made = run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    # The same arguments from the same folder, run by this venv's pip (as current as the make step's
    # `pip install --upgrade pip` leaves the new venv's: an old pip hides the backend's warnings)
    # into the new venv. --no-deps: the dependencies are a first run's downloads, not checked here.
    pip = (sys.executable, "-m", "pip", "--python", venv / "bin" / "python")
    done = subprocess.run(
        [str(a) for a in (*pip, *args[2:], "--no-deps")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not re.search(r"warning", output, re.IGNORECASE), output
    where = [venv / "bin" / "python", "-c", "import vae_serve; print(vae_serve.DEFAULT_REPOSITORY)"]
    found = subprocess.run(where, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    repository = Path(found.stdout.strip())  # the copy the wheel carries, not the checkout's
    assert repository.is_relative_to(venv), repository
    assert (repository / "fashion-vae" / DEFAULT_VERSION / "model.json").is_file()


def test_a_first_make_serve_says_what_it_is_doing(tmp_path):
    """A fresh checkout's `make serve` creates a venv and installs for a while before it serves: it
    says so before each step, and pip's own progress (what it is downloading) is not quieted."""
    venv = tmp_path / "venv"
    done = run("make", "--dry-run", "--no-print-directory", "-C", REPO_ROOT, f"VENV={venv}", "serve")
    assert done.returncode == 0, done.stderr
    steps = done.stdout.splitlines()
    for step in ("-m venv", "pip install --upgrade pip", f"{venv}/bin/vae-serve"):  # each said first
        (at,) = [i for i, line in enumerate(steps) if step in line]
        assert at > 0 and steps[at - 1].startswith("echo "), steps
    installs = [step for step in steps if "pip install" in step]
    assert installs and not any(re.search(r"\s-q\b|--quiet", step) for step in installs), installs


@pytest.mark.slow
def test_wheel_contains_every_module_the_default_model_and_the_playground(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, target in LAYOUT.items():
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.suffix in PACKAGED and "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(REPO_ROOT / folder).as_posix()}")
    missing = expected - names
    assert not missing, sorted(missing)
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"vae_serve"}  # no bare server/client/training package


def canonical(requirement: str) -> str:
    """The distribution name of a requirement line, normalised as PEP 503 does."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def third_party_distributions(folder: str) -> dict[str, set[str]]:
    """Top-level module -> the installed distributions that provide it, for every absolute import
    in `folder` and its subpackages that is neither the standard library nor vae_serve."""
    provided = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (REPO_ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules = [node.module]
            else:
                continue
            for top in {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"vae_serve"}:
                found[top] = {canonical(d) for d in provided.get(top, [top])}
    return found


def test_each_side_imports_only_what_its_install_brings():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    base = {canonical(r) for r in project["dependencies"]}
    extras = {name: {canonical(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    allowed = {"vae_serve": base, "client": base, "server": base | extras["server"]}
    allowed["training"] = base | extras["train"]
    for folder, may_use in allowed.items():
        outside = {m: d for m, d in third_party_distributions(folder).items() if not d & may_use}
        assert not outside, f"{folder}/ imports modules its install does not bring: {outside}"
    # vae-serve's one-line check names every module the server extra adds.
    server_only = {m for m, d in third_party_distributions("server").items() if not d & base}
    assert server_only <= set(SERVER_MODULES), server_only - set(SERVER_MODULES)
    assert "onnx" not in server_only  # the checker is the trainer's; the server reads graphs itself


def test_client_import_loads_no_server_module():
    # Not grpc_reflection: `import grpc` itself imports it wherever it is installed (grpc/__init__.py).
    code = (
        "import sys, vae_serve.client, vae_serve.client.cli\n"
        "bad = ('vae_serve.server', 'vae_serve.training', 'onnxruntime', 'onnx', 'prometheus_client',"
        " 'pydantic', 'pydantic_settings', 'torch')\n"
        "print(sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in bad)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_extra_ends_in_one_line_naming_it():
    with pytest.raises(SystemExit) as exc:
        require_extra("vae-serve", "server", ("onnxruntime", "no_such_module_here"))
    expected = "vae-serve: error: no_such_module_here not installed; pip install 'vae-serve[server]'"
    assert str(exc.value) == expected
    require_extra("vae-serve", "server", SERVER_MODULES)  # the dev venv has them: no exit


def run(*cmd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_install_without_extras_is_a_working_client_and_nothing_of_the_server(wheel, tmp_path):
    # The client's wheels at the dev venv's exact versions, then an install that needs no index.
    pins = run(sys.executable, "-m", "pip", "freeze", "--exclude-editable")
    assert pins.returncode == 0, pins.stderr
    (tmp_path / "pins.txt").write_text(pins.stdout)
    wheelhouse, pip = tmp_path / "wheelhouse", (sys.executable, "-m", "pip")
    got = run(*pip, "download", "-q", "-d", wheelhouse, "-c", tmp_path / "pins.txt", wheel)
    assert got.returncode == 0, got.stderr
    venv = tmp_path / "client-venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv)  # no system site packages
    assert made.returncode == 0, made.stderr
    bin_ = venv / "bin"
    pip = (*pip, "--python", bin_ / "python")  # this venv's pip works on the new one: no pip of its own
    done = run(*pip, "install", "-q", "--no-index", "--find-links", wheelhouse, wheel)
    assert done.returncode == 0, done.stderr

    listed = run(*pip, "list", "--format=freeze")
    installed = {canonical(line) for line in listed.stdout.splitlines()}
    assert "vae-serve" in installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    assert not installed & {"torch", "onnx", "onnxscript", "tqdm"}
    assert run(bin_ / "python", "-c", "import onnxruntime").returncode != 0

    for command, extra in (("vae-serve", "server"), ("vae-train", "train")):
        done = run(bin_ / command, "--help")
        assert done.returncode == 1, done.stdout + done.stderr
        (line,) = done.stderr.splitlines()  # one line, no traceback
        assert line.startswith(f"{command}: error: ") and line.endswith(f"pip install 'vae-serve[{extra}]'")

    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0")  # from the dev venv
    try:
        target = f"127.0.0.1:{port}"
        done = run(bin_ / "vae-client", "--target", target, "info")
        assert done.returncode == 0, done.stderr
        assert (
            f"model:     fashion-vae version {DEFAULT_VERSION}" in done.stdout
            and "health:    SERVING" in done.stdout
        )
        png = tmp_path / "samples.png"
        done = run(bin_ / "vae-client", "--target", target, "sample", "-n", "4", "--seed", "1", "-o", png)
        assert done.returncode == 0, done.stderr
        assert png.read_bytes().startswith(b"\x89PNG")
    finally:
        proc.terminate()
        proc.wait(30)
