"""Generate the Python stubs for every .proto under protos/ into vae_serve/_proto/.

    python protos/generate.py          # regenerate (after editing a .proto)
    python protos/generate.py --check  # exit 1 if the checked-in stubs are stale (CI runs this)

protoc writes absolute imports (`from vae.v1 import vae_pb2`); they are rewritten to live under
`vae_serve._proto`, so the generated packages never claim a top-level name.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent
# The well-known types (google/protobuf/struct.proto, ...), as grpcio-tools ships them: the Python
# modules they generate come with protobuf, so only the .proto files are needed here.
WELL_KNOWN = resources.files("grpc_tools") / "_proto"
TARGET = PROTOS.parent / "vae_serve" / "_proto"
PACKAGE = "vae_serve._proto"


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{WELL_KNOWN}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
    ]
    if protoc.main([*args, *sources]) != 0:
        sys.exit("protoc failed")
    roots = {Path(s).parts[0] for s in sources}
    pattern = re.compile(rf"^(from|import) ({'|'.join(map(re.escape, roots))})(\.| )", re.MULTILINE)
    for path in out.rglob("*.py*"):
        path.write_text(pattern.sub(rf"\1 {PACKAGE}.\2\3", path.read_text()))
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


def stale_files(fresh: Path) -> list[str]:
    names = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
    names |= {
        p.relative_to(TARGET) for p in TARGET.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    return sorted(
        str(n)
        for n in names
        if not (
            (TARGET / n).is_file()
            and (fresh / n).is_file()
            and filecmp.cmp(TARGET / n, fresh / n, shallow=False)
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the stubs differ from the protos")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if check:
            stale = stale_files(fresh)
            if stale:
                sys.exit(f"generated stubs are stale: {', '.join(stale)}; run `make proto` and commit")
            print("generated stubs are current")
            return
        import shutil

        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(fresh, TARGET)
        print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
