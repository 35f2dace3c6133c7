"""How much JSON the HTTP front end reads or writes in one request.

JSON text of tensors is parsed and written by C code that holds the GIL throughout (orjson,
numpy), so a thread does not keep the event loop free while it runs, and the stall grows with
the text. JSON bodies and replies stay within MAX_JSON_BYTES; binary tensor data (KServe) and
pictures carry more, up to --max-message-bytes.
"""

from vae_serve.errors import TooLarge

__all__ = [
    "JSON_BYTES_PER_VALUE",
    "MAX_JSON_BYTES",
    "MAX_JSON_VALUES",
    "MAX_UPLOAD_BYTES",
    "check_json_cost",
    "is_count",
]

MAX_JSON_BYTES = 4 << 20
JSON_BYTES_PER_VALUE = 12  # a float32 as orjson writes it, with its comma, rounded up
# Pictures, one or a multipart form of several: the form is parsed on the event loop
# (python-multipart, on a worker thread), and 64 pictures of 1024x1024 fit.
MAX_UPLOAD_BYTES = 8 << 20
# What parsing JSON costs is the objects it makes, not its bytes: a body of millions of tiny
# arrays holds the GIL for most of a second. So a body's values and arrays are counted (cheaply,
# with `bytes.count`) and refused before it is parsed: values to what parses in tens of
# milliseconds, arrays to what a request's rows need. An object's key (a `:`) counts as two
# values more: a string made and a dict entry, several times a number's cost.
MAX_JSON_VALUES = 1 << 19
JSON_SPARE_ARRAYS = 64  # the arrays and objects of a body's structure, besides its rows


def check_json_cost(body: bytes, max_rows: int, end: int | None = None) -> None:
    """Refuse (413) a JSON text (`body[:end]`) that would make more than MAX_JSON_VALUES values
    (keys weighed as above), or more arrays and objects than two tensors of `max_rows` rows need,
    before it is parsed."""
    end = len(body) if end is None else end
    arrays = body.count(b"[", 0, end) + body.count(b"{", 0, end)
    if arrays > 2 * max_rows + JSON_SPARE_ARRAYS:
        raise TooLarge(
            f"a JSON body of {arrays} arrays and objects is over what {max_rows} rows need; send fewer rows"
        )
    if body.count(b",", 0, end) + 2 * body.count(b":", 0, end) >= MAX_JSON_VALUES:
        raise TooLarge(
            f"a JSON body of over {MAX_JSON_VALUES} values is over the JSON limit; "
            "send fewer rows, or binary tensor data"
        )


def is_count(text: str) -> bool:
    """A plain decimal count from a header: ASCII digits only (str.isdigit also takes "²", which
    int() refuses), and short (int() refuses numbers of over 4300 digits)."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()
