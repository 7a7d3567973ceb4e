"""Params to bytes and bytes to results, the same way for both calling conventions.

Input (``input_format``): ``None`` is empty input and ``bytes`` pass through
unchanged whatever the format; anything else is encoded as JSON (default),
msgpack, or — for ``raw`` — a string's UTF-8.

Output (``output_format``): ``auto`` (default) turns empty output into ``None``,
output that parses as JSON into that value, other UTF-8 into a string, and
anything else into bytes; ``json`` and ``msgpack`` insist on their format
(FUNCTION_ERROR otherwise), ``text`` decodes UTF-8 (invalid bytes replaced) and
``bytes`` returns the bytes untouched.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

import msgpack

from ...errors import ErrorCode, SpearError

__all__ = ["ChunkDecoder", "decode_output", "encode_input"]


def encode_input(params: Any, fmt: str) -> bytes:
    """The bytes a function receives for *params*; INVALID_ARGUMENT if they cannot be encoded."""
    if params is None:
        return b""
    if isinstance(params, bytes | bytearray | memoryview):
        return bytes(params)
    try:
        if fmt == "json":
            return json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
        if fmt == "msgpack":
            packed: bytes = msgpack.packb(params, use_bin_type=True)
            return packed
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"params cannot be encoded as {fmt}: {exc}") from None
    if isinstance(params, str):
        return params.encode()
    raise SpearError(
        ErrorCode.INVALID_ARGUMENT,
        f"input_format 'raw' takes a string or bytes, got {type(params).__name__}",
    )


def decode_output(data: bytes, fmt: str) -> Any:
    """The result for a function's output bytes; FUNCTION_ERROR if they break *fmt*."""
    if fmt == "bytes":
        return bytes(data)
    if fmt == "text":
        return data.decode(errors="replace")
    if not data:
        return None
    if fmt == "msgpack":
        try:
            return msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise _bad_output("msgpack", exc) from None
    try:
        return json.loads(data)
    except ValueError as exc:
        if fmt == "json":
            raise _bad_output("JSON", exc) from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return bytes(data)


def _bad_output(kind: str, exc: Exception) -> SpearError:
    return SpearError(ErrorCode.FUNCTION_ERROR, f"the function's output is not valid {kind}: {exc}")


class ChunkDecoder:
    """Turns stdout chunks into stream items: text (a UTF-8 character split across
    two writes is held back until it is whole), or raw bytes for ``output_format: bytes``."""

    def __init__(self, fmt: str) -> None:
        self._text = fmt != "bytes"
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes, final: bool = False) -> str | bytes | None:
        """The item for *chunk*, or None when there is nothing to deliver yet."""
        if not self._text:
            return chunk or None
        text: str = self._decoder.decode(chunk, final)
        return text or None
