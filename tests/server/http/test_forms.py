"""Multipart forms as the upload routes read them: the files kept, other fields and parts
counted, anything malformed a one-line InvalidInput."""

from __future__ import annotations

import httpx
import pytest

from vae_serve.errors import InvalidInput
from vae_serve.server.http.forms import form_files


def _form(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A body and content type as a real client (httpx) encodes them."""
    request = httpx.Request(
        "POST",
        "http://x/",
        files=[("file", (name, data, "image/png")) for name, data in files],
        data=fields or {},
    )
    return request.read(), request.headers["content-type"]


def test_files_come_back_in_order_with_their_names_and_fields_are_skipped():
    body, kind = _form([("a.png", b"\x89PNG first"), ("b.png", b"second\r\n--not-a-boundary")], {"k": "v"})
    assert form_files(body, kind, max_parts=8) == [
        ("a.png", b"\x89PNG first"),
        ("b.png", b"second\r\n--not-a-boundary"),
    ]


def test_parts_are_counted_fields_included():
    body, kind = _form([("a.png", b"x")], {f"f{i}": "v" for i in range(4)})
    with pytest.raises(InvalidInput, match="over 4 parts"):
        form_files(body, kind, max_parts=4)
    assert len(form_files(body, kind, max_parts=5)) == 1


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        (b"--x\r\n", "multipart/form-data", "with a boundary"),
        (b"", "text/plain; boundary=x", "with a boundary"),
        (b"garbage without any boundary", "multipart/form-data; boundary=x", "multipart form"),
        (
            b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--x--\r\n",
            "multipart/form-data; boundary=x",
            "with image files",
        ),
    ],
)
def test_malformed_or_empty_forms_are_invalid_input(body, kind, message):
    with pytest.raises(InvalidInput, match=message):
        form_files(body, kind, max_parts=8)
