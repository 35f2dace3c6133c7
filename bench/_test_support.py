"""The tests' process helpers (tests/procs.py) for the benchmarks, which start servers the way the
tests do; the one way a benchmark reaches the tests' support code (the tests never import bench/).
A script run as `python bench/x.py` has bench/ on its path, not tests/: this module adds it."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))

from procs import free_port, start_nginx, start_server, start_server_ports

__all__ = ["free_port", "start_nginx", "start_server", "start_server_ports"]
