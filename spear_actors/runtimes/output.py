"""Agent output in linear time and bounded size.

An agent may write anything to stdout/stderr: 400 MiB without a newline, or
millions of empty lines. :class:`LineSplitter` scans each byte once, keeps at most
``max_line`` bytes of a line (the rest is counted and the line marked
``[truncated N bytes]``) and lets through at most ``lines_per_second`` lines (the
rest are counted in bulk and reported as one ``[N lines dropped]`` line), so what
it costs the node is proportional to the bytes read, with a small constant.
:func:`capped_log` bounds the log lines kept for one execution.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

__all__ = ["LINES_PER_SECOND", "LineSplitter", "capped_log"]

LINES_PER_SECOND: Final = 1000
"""Agent output lines per second (per stream) written to the node log; a burst of
that many more is allowed."""


# Control characters (but tab) would let an agent forge or hide log lines on a
# terminal; they are shown as U+FFFD.
_CONTROLS = {code: "\ufffd" for code in (*range(0x20), 0x7F) if code != 0x09}


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode(errors="replace").rstrip("\r").translate(_CONTROLS)


class LineSplitter:
    """Splits a byte stream into capped lines (see the module docstring)."""

    def __init__(self, max_line: int, lines_per_second: int = LINES_PER_SECOND) -> None:
        self.max_line = max_line
        self.rate = lines_per_second
        self._line = bytearray()
        self._cut = 0
        """Bytes dropped from the current line."""
        self._tokens = float(lines_per_second)
        self._refilled: float | None = None
        self._dropped = 0
        """Whole lines dropped by the rate limit since the last line let through."""

    def _take(self, piece: bytes | memoryview) -> None:
        room = self.max_line - len(self._line)
        if room >= len(piece):
            self._line += piece
        else:
            if room > 0:
                self._line += piece[:room]
            self._cut += len(piece) - max(room, 0)

    def _finish_line(self) -> str:
        text = _decode(self._line)
        if self._cut:
            text = f"{text} [truncated {self._cut} bytes]"
        self._line.clear()
        self._cut = 0
        return text

    def _refill(self, now: float) -> None:
        if self._refilled is not None:
            self._tokens = min(float(self.rate), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    def feed(self, data: bytes, now: float) -> Iterator[str]:
        """The lines completed by *data* (read at time *now*, in seconds)."""
        self._refill(now)
        view = memoryview(data)
        start = 0
        while True:
            if self._tokens < 1:
                # Over the rate: count the remaining lines without looking at them.
                newlines = data.count(b"\n", start)
                if newlines:
                    self._dropped += newlines
                    self._line.clear()
                    self._cut = 0
                    start = data.rindex(b"\n") + 1
                self._take(view[start:])
                return
            end = data.find(b"\n", start)
            if end < 0:
                self._take(view[start:])
                return
            self._take(view[start:end])
            start = end + 1
            self._tokens -= 1
            if self._dropped:
                yield f"[{self._dropped} lines dropped: agent output over {self.rate} lines/s]"
                self._dropped = 0
            yield self._finish_line()

    def finish(self) -> Iterator[str]:
        """The last, unterminated line (if any) once the stream has ended."""
        if self._dropped:
            yield f"[{self._dropped} lines dropped: agent output over {self.rate} lines/s]"
            self._dropped = 0
        if self._line or self._cut:
            yield self._finish_line()


def capped_log(lines: Iterable[object], max_line: int, max_total: int) -> Iterator[str]:
    """*lines* with each line cut at *max_line* characters and at most *max_total*
    bytes in all (UTF-8); past that, one line says how many lines were dropped."""
    used = 0
    dropped = 0
    for item in lines:
        line = str(item)
        if len(line) > max_line:
            line = f"{line[:max_line]} [truncated {len(line) - max_line} characters]"
        size = len(line.encode(errors="replace")) + 1
        if dropped or used + size > max_total:
            dropped += 1
            continue
        used += size
        yield line
    if dropped:
        yield f"[{dropped} log lines dropped: over the {max_total} bytes kept per execution]"
