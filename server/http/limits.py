"""How much JSON the HTTP front end reads or writes in one request.

JSON text of tensors is parsed and written by C code that holds the GIL throughout (orjson,
numpy), so a thread does not keep the event loop free while it runs. Measured on this machine:
17 MB of JSON stalls the loop ~190 ms, 4 MB ~30 ms. JSON bodies and replies stay within
MAX_JSON_BYTES; binary tensor data (KServe) and pictures carry more, up to --max-message-bytes.
"""

__all__ = ["JSON_BYTES_PER_VALUE", "MAX_JSON_BYTES", "MAX_UPLOAD_BYTES", "is_count"]

MAX_JSON_BYTES = 4 << 20
JSON_BYTES_PER_VALUE = 12  # a float32 as orjson writes it, with its comma (measured: ~10.6 on average)
# Pictures, one or a multipart form of several: the form is parsed on the event loop
# (python-multipart, ~30 ms for 8 MB measured), and 64 pictures of 1024x1024 fit.
MAX_UPLOAD_BYTES = 8 << 20


def is_count(text: str) -> bool:
    """A plain decimal count from a header: ASCII digits only (str.isdigit also takes "²", which
    int() refuses), and short (int() refuses numbers of over 4300 digits)."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()
