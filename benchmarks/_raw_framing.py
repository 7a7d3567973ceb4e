"""The raw floors' framing: 8-byte little-endian length + body (the agent link's
framing, written here without the project's code so the floors measure bare trio)."""

from __future__ import annotations

import trio


class FrameReader:
    """Whole 8-byte-length-prefixed bodies from a stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def body(self) -> bytes:
        buffer = self.buffer
        while len(buffer) < 8 or len(buffer) < 8 + int.from_bytes(buffer[:8], "little"):
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            buffer += data
        length = int.from_bytes(buffer[:8], "little")
        body = bytes(buffer[8 : 8 + length])
        del buffer[: 8 + length]
        return body


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(8, "little") + body
