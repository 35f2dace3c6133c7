"""A real S3-compatible server for tests: moto's, in a process of its own on 127.0.0.1.

    with MotoStore() as s3:
        s3.endpoint        # http://127.0.0.1:PORT
        s3.create_bucket("models")
        s3.requests()      # ["GET /models/m/1/model.json", ...] since the last call
        s3.fill("models", "repo/m/", 100_000)  # empty objects, put straight into moto's backend
        s3.put_raw("models", "repo/m/../x")      # any key, even one obstore will not write

Its own process, so that the requests moto answers in Python never hold the GIL of the process
whose event loop a test measures. Commands go over stdin, one JSON reply a line on stdout.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
from typing import Any

REGION = "us-east-1"


class MotoStore:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def __enter__(self) -> MotoStore:
        self._proc = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.endpoint = f"http://127.0.0.1:{self._ask({'op': 'port'})}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.kill()  # nothing to keep; a graceful exit frees every object, seconds for 100,000
        self._proc.wait(timeout=30)
        self._proc.stdin.close()
        self._proc.stdout.close()

    def _ask(self, command: dict[str, Any]) -> Any:
        assert self._proc is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())

    def create_bucket(self, bucket: str) -> None:
        self._ask({"op": "bucket", "bucket": bucket})

    def fill(self, bucket: str, prefix: str, count: int) -> None:
        self._ask({"op": "fill", "bucket": bucket, "prefix": prefix, "count": count})

    def put_raw(self, bucket: str, key: str, data: bytes = b"") -> None:
        """Any key at all (`..`, NUL, control characters), as a hostile uploader could make it."""
        self._ask({"op": "put", "bucket": bucket, "key": key, "data": data.decode("latin-1")})

    def requests(self) -> list[str]:
        """`METHOD /path?query` of each request answered since the last call."""
        return self._ask({"op": "requests"})


def _serve() -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    seen: list[str] = []
    lock = threading.Lock()

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # werkzeug's access line: '<peer> - - [<time>] "<METHOD> <target> HTTP/1.1" <code> -'
            found = re.search(r'"([A-Z]+) (\S+) HTTP/', record.getMessage())
            if found:
                with lock:
                    seen.append(f"{found[1]} {found[2]}")

    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.addHandler(Record())
    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for line in sys.stdin:
        command = json.loads(line)
        op, reply = command["op"], None
        if op == "port":
            reply = server.get_host_and_port()[1]
        elif op == "bucket":
            backend.create_bucket(command["bucket"], REGION)
        elif op == "fill":
            for i in range(command["count"]):
                backend.put_object(command["bucket"], f"{command['prefix']}{i:07d}/junk", b"")
        elif op == "put":
            backend.put_object(command["bucket"], command["key"], command["data"].encode("latin-1"))
        elif op == "requests":
            with lock:
                reply, seen[:] = list(seen), []
        print(json.dumps(reply), flush=True)
    server.stop()


if __name__ == "__main__":
    _serve()
