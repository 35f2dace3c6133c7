"""Multipart picture uploads, parsed off the event loop.

Starlette's form parser runs python-multipart on the event loop (about 30 ms for an 8 MiB
body), so it is not used: the body, already read within the upload limit, is parsed here on a
worker thread, where the pure-Python parser gives the loop the GIL back every switch interval.
Only the files (parts with a filename) are kept; the parts are counted before they are kept.
Whatever python-multipart refuses is the client's mistake: a one-line 400, nothing logged.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, cast

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from vae_serve.errors import InvalidInput

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # defined for type checkers only

__all__ = ["form_files"]

# RFC 2046, 5.1.1: 1 to 70 of these characters, the last not a space.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

# The parser logs a warning for each malformed body before it raises; the client is told, and a
# line per bad request would let anyone fill the log.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


class _Parts:
    """python-multipart's callbacks, collecting the files of a form."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts = 0
        self.files: list[tuple[str, bytes]] = []
        self._field, self._value = b"", b""
        self._filename: str | None = None
        self._data: list[bytes] = []

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise InvalidInput(f"multipart form: over {self.max_parts} parts")
        self._filename, self._data = None, []

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            _, options = parse_options_header(self._value)
            name = options.get(b"filename")
            if name is not None:
                self._filename = name.decode("utf-8", "replace")[:128] or "upload"
        self._field, self._value = b"", b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._filename is not None:
            self._data.append(data[start:end])

    def on_part_end(self) -> None:
        if self._filename is not None:
            self.files.append((self._filename, b"".join(self._data)))
        self._data = []


def form_files(body: bytes, content_type: str, max_parts: int) -> list[tuple[str, bytes]]:
    """The files of a `multipart/form-data` body as (filename, bytes): call it off the loop."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidInput("multipart form: expected multipart/form-data with a boundary")
    if not _BOUNDARY.fullmatch(boundary):
        raise InvalidInput("multipart form: the boundary must be 1 to 70 characters as RFC 2046 allows")
    parts = _Parts(max_parts)
    callbacks = {name: getattr(parts, name) for name in dir(parts) if name.startswith("on_")}
    try:
        parser = MultipartParser(boundary, cast("MultipartCallbacks", callbacks))  # _Parts' on_* methods
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:  # the base of everything python-multipart raises
        raise InvalidInput(f"multipart form: {str(exc)[:200]}") from None
    if not parts.files:
        raise InvalidInput("expected a PNG or JPEG body, or a multipart form with image files")
    return parts.files
