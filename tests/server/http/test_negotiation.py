"""Content negotiation for the routes that answer JSON or a PNG: Accept as RFC 9110 reads it, with
q-values and wildcards; no Accept, or a tie, is JSON."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from vae_serve.server.http.endpoint import MAX_ACCEPT_ENTRIES, wants_png


def _request(*accept: str) -> Request:
    headers = [(b"accept", value.encode("latin-1")) for value in accept]
    return Request({"type": "http", "method": "GET", "headers": headers})


@pytest.mark.parametrize(
    ("accept", "png"),
    [
        (None, False),
        ("", False),
        ("image/png", True),
        ("application/json", False),
        ("image/png;q=0", False),  # not acceptable at all
        ("image/png; q=0.000", False),
        ("image/pngx", False),
        ("ximage/png", False),
        ("image/png-not", False),
        ("*/*", False),  # curl's and httpx's default: a tie, and JSON is the default
        ("image/png, application/json", False),  # a tie
        ("application/json, image/png", False),
        ("image/png, application/json;q=0.9", True),
        ("image/png;q=0.5, application/json", False),
        ("image/png;q=0.5", True),
        ("image/*", True),
        ("image/*, application/json;q=0.5", True),
        ("image/*;q=0, */*", False),
        ("image/png;q=0, image/*", False),  # the most specific range decides
        ("image/*;q=0, image/png", True),
        ("*/*;q=0.8, image/png;q=0.8", True),  # named beats a wildcard at the same q
        ("image/png;q=0.8, application/*", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a page
        ("image/avif,image/webp,image/apng,image/*,*/*;q=0.8", True),  # an <img>
        ("IMAGE/PNG", True),
        ("image/png;Q=0", False),
        ("image/png;q=2", False),  # not a q-value: the range is skipped
        ("image/png;q=0.5x", False),
        ("image/png;level=1;q=0.4, application/json;q=0.3", True),
        ("image/png;q=0.9;ext=1, application/json;q=0.8", True),
        ("*/png", False),
        ("image", False),
        (",,, ;q=0, image/png", True),
    ],
)
def test_a_png_only_when_the_client_prefers_one(accept, png):
    request = _request() if accept is None else _request(accept)
    assert wants_png(request) is png


def test_every_accept_line_counts():
    assert wants_png(_request("application/json;q=0.1", "image/png")) is True


def test_only_the_first_entries_are_read():
    filler = ", ".join(["text/x-filler"] * (MAX_ACCEPT_ENTRIES - 1))
    assert wants_png(_request(f"{filler}, image/png")) is True
    assert wants_png(_request(f"{filler}, text/x-filler, image/png")) is False
    assert wants_png(_request("text/x-filler," * 100_000 + "image/png")) is False  # and quickly
