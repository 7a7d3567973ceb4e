"""The sans-IO frame decoder: any cut of valid frames decodes, limits hold, close is close."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear_actors.errors import ErrorCode
from spear_actors.protocol.framing import (
    CLOSE_FRAME,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)

bodies = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def _decode_all(decoder: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    out = []
    for piece in pieces:
        decoder.feed(piece)
        while (body := decoder.next_body()) is not None:
            out.append(body)
    return out


def test_frame_layout_is_8_byte_little_endian_length() -> None:
    assert encode_frame(b"abc") == b"\x03\x00\x00\x00\x00\x00\x00\x00abc"
    assert HEADER_SIZE == 8
    assert bytes(8) == CLOSE_FRAME
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024


def test_empty_body_cannot_be_framed() -> None:
    with pytest.raises(ValueError, match="close frame"):
        encode_frame(b"")


@given(bodies, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_frames_cut_anywhere_decode_to_the_same_bodies(items: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(b) for b in items)
    decoder = FrameDecoder()
    assert _decode_all(decoder, _cut(stream, cuts)) == items
    assert decoder.buffered == 0
    assert not decoder.closed


@given(bodies, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_close_frame_after_frames_closes(items: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(b) for b in items) + CLOSE_FRAME
    decoder = FrameDecoder()
    assert _decode_all(decoder, _cut(stream, cuts)) == items
    assert decoder.closed
    assert decoder.next_body() is None


def test_zero_length_frame_means_close() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"x") + CLOSE_FRAME)
    assert decoder.next_body() == b"x"
    assert not decoder.closed
    assert decoder.next_body() is None
    assert decoder.closed
    assert decoder.next_body() is None


def test_data_after_close_is_a_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(CLOSE_FRAME)
    assert decoder.next_body() is None
    with pytest.raises(ProtocolError, match="after the close frame"):
        decoder.feed(b"\x01")


def test_data_after_close_in_the_same_chunk_is_a_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(CLOSE_FRAME + encode_frame(b"late"))
    with pytest.raises(ProtocolError, match="after the close frame"):
        decoder.next_body()


@pytest.mark.parametrize("limit", [1, 100, DEFAULT_MAX_FRAME_SIZE])
def test_oversize_header_is_rejected_from_the_header_alone(limit: int) -> None:
    decoder = FrameDecoder(max_frame_size=limit)
    decoder.feed(struct.pack("<Q", limit + 1))  # the header only: no body byte was sent
    with pytest.raises(ProtocolError, match=f"exceeds the maximum of {limit}") as info:
        decoder.next_body()
    assert info.value.code is ErrorCode.PROTOCOL_ERROR
    assert decoder.buffered == HEADER_SIZE  # nothing of the body was waited for or kept


def test_header_cut_in_the_middle_is_checked_once_complete() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    header = struct.pack("<Q", 2**64 - 1)
    decoder.feed(header[:5])
    assert decoder.next_body() is None
    decoder.feed(header[5:])
    with pytest.raises(ProtocolError):
        decoder.next_body()


def test_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    decoder.feed(encode_frame(b"0123456789"))
    assert decoder.next_body() == b"0123456789"


def test_partial_body_waits_for_more() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    decoder.feed(frame[:10])
    assert decoder.next_body() is None
    assert decoder.buffered == 2
    decoder.feed(frame[10:])
    assert decoder.next_body() == b"hello"


def test_max_frame_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=0)


@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(min_value=1, max_value=2000))
def test_arbitrary_bytes_raise_nothing_but_protocol_error(chunks: list[bytes], limit: int) -> None:
    decoder = FrameDecoder(max_frame_size=limit)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (body := decoder.next_body()) is not None:
                assert 0 < len(body) <= limit
    except ProtocolError:
        pass
