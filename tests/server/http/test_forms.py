"""Multipart forms as the upload routes read them: the files kept, other fields and parts
counted, anything malformed a one-line InvalidInput."""

from __future__ import annotations

import httpx
import pytest
from python_multipart.exceptions import (
    DecodeError,
    FormParserError,
    MultipartParseError,
    QuerystringParseError,
)

from vae_serve.errors import InvalidInput
from vae_serve.server.http import forms
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


@pytest.mark.parametrize(
    "parameter",
    ["b" * 71, "b" * 300, '"ends in a space "', "not@a-bchar", '"a\tb"', '"\xe9t\xe9"'],
    ids=["71 characters", "300 characters", "a trailing space", "an @", "a tab", "not ASCII"],
)
def test_a_boundary_outside_rfc_2046_is_invalid_input(parameter):
    """RFC 2046: 1 to 70 of its characters, the last not a space; python-multipart allows 256."""
    body = f"--{parameter.strip(chr(34))}\r\n".encode("latin-1")
    with pytest.raises(InvalidInput, match="boundary"):
        form_files(body, f"multipart/form-data; boundary={parameter}", max_parts=8)


def test_a_boundary_of_70_characters_is_taken():
    boundary = "b" * 70
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=f; filename=a.png\r\n\r\n"
        f"data\r\n--{boundary}--\r\n"
    ).encode()
    assert form_files(body, f'multipart/form-data; boundary="{boundary}"', max_parts=8) == [
        ("a.png", b"data")
    ]


@pytest.mark.parametrize("error", [FormParserError, MultipartParseError, DecodeError, QuerystringParseError])
def test_every_python_multipart_error_is_invalid_input(monkeypatch, error):
    """Whatever python-multipart refuses (its errors share one base class) is the client's mistake."""

    class Refusing:
        def __init__(self, *_args: object, **_kwargs: object) -> None:
            raise error("refused by the parser")

    monkeypatch.setattr(forms, "MultipartParser", Refusing)
    with pytest.raises(InvalidInput, match="multipart form: refused by the parser"):
        form_files(b"--x\r\n", "multipart/form-data; boundary=x", max_parts=8)
