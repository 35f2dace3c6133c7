"""The IDX reader shared by the trainer and the client."""

import gzip
import os
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import idx_bytes

from vae_serve.idx import IdxError, read_idx


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5) * 4


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips(tmp_path, images, compress):
    raw = idx_bytes(images)
    path = tmp_path / ("f.gz" if compress else "f")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "labels"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), [1, -2, 70000])


def test_truncated_header(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(IdxError, match="truncated header"):
        read_idx(path)


@pytest.mark.parametrize("head", [b"\x1f\x8b\x08\x00", b"PK\x03\x04", b"\x00\x00\x42\x03", b""])
def test_wrong_magic(tmp_path, head):
    path = tmp_path / "f"
    path.write_bytes(head + b"\x00" * 16)
    with pytest.raises(IdxError, match=rf"{path}: not an IDX file"):
        read_idx(path)


def _bomb(path, records: int, width: int = 784) -> None:
    """A gzip bomb: an honest header of `records` zero records, about 1000x smaller compressed."""
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(struct.pack(">BBBBII", 0, 0, 0x08, 2, records, width))
        block = bytes(width * 1000)
        for start in range(0, records, 1000):
            f.write(block[: width * min(1000, records - start)])


def _peak_bytes(fn) -> tuple[object, int]:
    """fn()'s result and the most memory (Python and numpy allocations) it held at once."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _refusal(fn) -> tuple[str, int]:
    """The IdxError message fn() ends in, and the most memory it held before."""
    tracemalloc.start()
    try:
        fn()
    except IdxError as exc:
        return str(exc), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raise AssertionError("no IdxError")


def test_gzip_bomb_decompresses_only_the_records_asked_for(tmp_path):
    path = tmp_path / "bomb.gz"
    _bomb(path, 100_000)  # 78 MB decompressed, 76 KB on disk
    first, peak = _peak_bytes(lambda: read_idx(path, limit=2))
    assert first.shape == (2, 784) and not first.any()
    assert peak < 4 << 20


def test_gzip_bomb_over_the_cap_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.gz"
    _bomb(path, 100_000)
    message, peak = _refusal(lambda: read_idx(path, max_bytes=1_000_000))
    assert message == (
        f"{path}: header (100000, 784) declares 78400000 bytes to read, above the limit of 1000000; "
        "use a smaller file or fewer records"
    )
    assert peak < 1 << 20


@pytest.mark.parametrize("compress", [False, True])
def test_header_whose_size_overflows_int64_is_an_idx_error(tmp_path, compress):
    # 65536**4 bytes wraps to 0 in int64, which once matched an empty payload and failed in reshape.
    raw = struct.pack(">BBBB4I", 0, 0, 0x08, 4, *[65536] * 4)
    path = tmp_path / ("f.gz" if compress else "f")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(IdxError, match=rf"{path}: "):
        read_idx(path)
    with pytest.raises(IdxError, match=rf"{path}: "):
        read_idx(path, max_bytes=None)


@pytest.mark.parametrize("compress", [False, True])
def test_header_claiming_more_than_the_file_holds_reads_only_what_is_there(tmp_path, compress):
    raw = struct.pack(">BBBBII", 0, 0, 0x08, 2, 10**9, 784) + bytes(784 * 3)
    path = tmp_path / ("f.gz" if compress else "f")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    message, peak = _refusal(lambda: read_idx(path, max_bytes=None))
    assert message.startswith(f"{path}: truncated")
    assert peak < 4 << 20


def test_padded_gzip_payload_is_refused_but_a_limit_need_not_read_it(tmp_path, images):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(idx_bytes(images) + b"extra"))
    with pytest.raises(IdxError, match=rf"{path}: padded"):
        read_idx(path)
    np.testing.assert_array_equal(read_idx(path, limit=2), images[:2])
    with pytest.raises(IdxError, match="padded"):
        read_idx(path, limit=10)  # a limit past the end reads all of it, and so checks the end


@pytest.mark.timeout(60)
def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(IdxError, match=rf"{tmp_path}: cannot read \(not a regular file\)"):
        read_idx(tmp_path)
    with pytest.raises(IdxError, match=rf"{fifo}: cannot read \(not a regular file\)"):  # not a hang
        read_idx(fifo)


def test_limit_reads_the_first_records_of_plain_files_too(tmp_path, images):
    path = tmp_path / "f"
    path.write_bytes(idx_bytes(images))
    np.testing.assert_array_equal(read_idx(path, limit=1), images[:1])
    with pytest.raises(IdxError, match=r"above the limit of 10$"):
        read_idx(path, limit=1, max_bytes=10)  # one record is 20 bytes


def _valid_idx(draw) -> bytes:
    rank = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0, 5), min_size=rank, max_size=rank))
    code, dtype = draw(
        st.sampled_from(
            [(0x08, "u1"), (0x09, "i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")]
        )
    )
    payload = bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return struct.pack(">BBBB", 0, 0, code, rank) + struct.pack(f">{rank}I", *shape) + payload


@st.composite
def _hostile_idx(draw) -> tuple[bytes, bool]:
    """Random bytes, or a valid file truncated, extended, or with header bytes overwritten; maybe
    gzipped (and then maybe the gzip stream itself cut or corrupted)."""
    if draw(st.booleans()):
        raw = draw(st.binary(max_size=64))
    else:
        raw = bytearray(_valid_idx(draw))
        if draw(st.booleans()) and raw[3]:  # a lying shape: sizes that overflow, or just wrong ones
            lies = st.sampled_from([0, 1, 2, 65536, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
            raw[4 : 4 + 4 * raw[3]] = struct.pack(f">{raw[3]}I", *[draw(lies) for _ in range(raw[3])])
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, min(len(raw), 16)))
            raw[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        raw = bytes(raw[: draw(st.integers(0, len(raw)))]) if draw(st.booleans()) else bytes(raw)
        raw += draw(st.binary(max_size=4))
    compress = draw(st.booleans())
    if compress and draw(st.booleans()):
        data = bytearray(gzip.compress(raw))
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
        else:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data), True
    return (gzip.compress(raw) if compress else raw), compress


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_hostile_idx())
@example((struct.pack(">BBBB4I", 0, 0, 0x08, 4, *[65536] * 4), False))  # 2**64 bytes: 0 in int64
@example((struct.pack(">BBBB4I", 0, 0, 0x08, 4, 65536, 2**24, 0, 32768), False))  # 0 bytes, too big for numpy
def test_any_file_gives_an_array_or_an_idx_error_naming_it(case):
    data, compress = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("f.gz" if compress else "f")
        path.write_bytes(data)
        tracemalloc.start()
        try:
            outcome: np.ndarray | str = read_idx(path)
        except IdxError as exc:
            outcome = str(exc)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 4 << 20  # whatever the header claims
        if isinstance(outcome, str):
            assert outcome.startswith(f"{path}: ") and "\n" not in outcome
        else:
            assert outcome.nbytes <= len(gzip.decompress(data) if compress else data)
