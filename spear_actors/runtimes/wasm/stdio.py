"""Where a guest's stdout and stderr go: the host's own ``fd_write``.

wasmtime's WASI stdout/stderr (to a file or a Python callback) costs ~90 µs per
execution once configured plus ~15 µs per write, more than the whole rest of a
small call. So the runtime shadows WASI's ``fd_write`` with :func:`fd_write`: it
copies fds 1 and 2 straight out of linear memory into the :class:`ExecutionIO`
of the execution running on this thread, and hands any other fd (files in a
preopened directory) to wasmtime's own ``fd_write``.

stdout is *captured* (the result of a WASI command), *streamed* (STREAM mode:
each write becomes one stream item, delivered before the guest continues — that
is the backpressure) or *logged* (an exported function's prints). stderr is
always split into lines for the execution's log, and its tail is kept for error
details.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable
from typing import Any, Final

import trio
import wasmtime

from ..base import LogSink
from .capi import Interrupt, RawCaller, as_caller, memory_span
from .codec import ChunkDecoder

__all__ = ["ExecutionIO", "LogForwarder", "bind", "fd_write"]

# WASI errno values.
_EBADF: Final = 8
_EFAULT: Final = 21
_EFBIG: Final = 22
_EIO: Final = 29
_EPIPE: Final = 64

_TAIL_BYTES: Final = 2048
_MAX_LINE: Final = 8192  # a longer unterminated line is logged in pieces
_U32: Final = 0xFFFF_FFFF

_current = threading.local()


class LogForwarder:
    """Carries log lines from a worker thread to the execution's :data:`LogSink`.

    Lines are queued with ``run_sync_soon`` — the same FIFO that reports the
    worker's completion — so every line reaches the sink before ``execute``
    returns; lines from an abandoned (cancelled) execution after :meth:`close`
    are dropped."""

    def __init__(self, log: LogSink) -> None:
        self._log = log
        self._token = trio.lowlevel.current_trio_token()
        self._closed = False

    def line(self, text: str) -> None:
        """Queue *text* for the sink (callable from any thread)."""
        try:
            self._token.run_sync_soon(self._deliver, text)
        except trio.RunFinishedError:
            pass

    def _deliver(self, text: str) -> None:
        if self._closed:
            return
        try:
            self._log(text)
        except Exception:  # a failing log sink must not take the trio loop down
            self._closed = True

    def close(self) -> None:
        """Drop whatever arrives from now on."""
        self._closed = True


class ExecutionIO:
    """The stdout/stderr of one execution (used by its worker thread only)."""

    def __init__(
        self,
        *,
        stdout: str,
        max_output: int,
        logs: LogForwarder,
        emit: Callable[[Any], None] | None = None,
        output_format: str = "auto",
    ) -> None:
        assert stdout in ("capture", "stream", "log")
        self.mode = stdout
        self.max_output = max_output
        self.logs = logs
        self._emit = emit
        self._decoder = ChunkDecoder(output_format)
        self.memory: wasmtime.Memory | None = None
        """The instance's exported memory (looked up through the caller if unset)."""
        self.file_fd_write: wasmtime.Func | None = None
        """wasmtime's own fd_write for files (set when a directory is preopened)."""
        self.interrupt: Interrupt | None = None
        self.stdout = bytearray()
        self.overflowed = False
        """stdout went past ``max_output`` (the rest was refused with EFBIG)."""
        self.stream_error: BaseException | None = None
        """What the stream sink raised; the execution was stopped because of it."""
        self._partial: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._tail = bytearray()

    @property
    def stderr_tail(self) -> str:
        """The last ~2 KiB the guest wrote to stderr."""
        return self._tail.decode(errors="replace")

    def write(self, fd: int, data: bytes) -> int:
        """Take one write to fd 1 or 2; return a WASI errno (0 = success)."""
        if fd == 2:
            self._tail += data
            del self._tail[:-_TAIL_BYTES]
            self._log_lines(2, data)
            return 0
        if self.mode == "capture":
            if len(self.stdout) + len(data) > self.max_output:
                self.overflowed = True
                return _EFBIG
            self.stdout += data
            return 0
        if self.mode == "stream":
            return self._stream(self._decoder.feed(data))
        self._log_lines(1, data)
        return 0

    def _stream(self, item: Any) -> int:
        if self.stream_error is not None:
            return _EPIPE
        if item is None or self._emit is None:
            return 0
        try:
            self._emit(item)
        except BaseException as exc:  # the sink failed or the caller went away: stop the guest
            self.stream_error = exc
            if self.interrupt is not None:
                self.interrupt.cancel()
            return _EPIPE
        return 0

    def _log_lines(self, fd: int, data: bytes) -> None:
        partial = self._partial[fd]
        partial += data
        *lines, rest = partial.split(b"\n")
        for line in lines:
            self.logs.line(line.rstrip(b"\r").decode(errors="replace"))
        while len(rest) > _MAX_LINE:
            self.logs.line(rest[:_MAX_LINE].decode(errors="replace"))
            rest = rest[_MAX_LINE:]
        partial[:] = rest

    def finish(self) -> None:
        """Flush unterminated lines and the stream decoder (at the end of the execution)."""
        for partial in self._partial.values():
            if partial:
                self.logs.line(partial.decode(errors="replace"))
                partial.clear()
        if self.mode == "stream":
            self._stream(self._decoder.feed(b"", final=True))


def bind(io: ExecutionIO | None) -> None:
    """Make *io* the target of :func:`fd_write` on the calling (worker) thread."""
    _current.io = io


def fd_write(caller: RawCaller, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
    """WASI ``fd_write`` for the guest (on the unchecked ABI); returns a WASI errno
    and never raises: nothing may escape into wasmtime."""
    try:
        io: ExecutionIO | None = getattr(_current, "io", None)
        if io is None:
            return _EBADF
        if fd not in (1, 2):
            return (
                _EBADF
                if io.file_fd_write is None
                else _write_file(io.file_fd_write, caller, fd, iovs, iovs_len, nwritten)
            )
        base, size = memory_span(caller, io.memory)
        iovs, nwritten = iovs & _U32, nwritten & _U32
        if not base or iovs_len < 0 or iovs + 8 * iovs_len > size or nwritten + 4 > size:
            return _EFAULT
        table = ctypes.string_at(base + iovs, 8 * iovs_len)
        chunks = []
        for index in range(iovs_len):
            pointer, length = struct.unpack_from("<II", table, 8 * index)
            if pointer + length > size:
                return _EFAULT
            if length:
                chunks.append(ctypes.string_at(base + pointer, length))
        data = b"".join(chunks)
        error = io.write(fd, data) if data else 0
        if error:
            return error
        ctypes.memmove(base + nwritten, struct.pack("<I", len(data)), 4)
        return 0
    except BaseException:
        return _EIO


def _write_file(native: wasmtime.Func, raw: RawCaller, *args: int) -> int:
    caller = as_caller(raw)
    try:
        return int(native(caller, *args))
    finally:
        caller._invalidate()
