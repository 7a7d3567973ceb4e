"""TLS over a socket, with a write that does not wait, for websockets over ``wss://``.

``trio.SSLStream`` only writes through ``await send_all``, and a ``send_all`` it
cancelled half-way breaks the stream, so a websocket over it had to send every
message from its writer task (one task hop per message). :class:`TlsSocketStream`
drives an :class:`ssl.SSLObject` over two :class:`ssl.MemoryBIO` itself: encrypting
is a synchronous call, and its output goes into one ordered buffer of ciphertext
(:attr:`TlsSocketStream.can_write_now`, :meth:`TlsSocketStream.write_nowait`), the
same way :class:`~.wsguard.NowaitWriter` writes a plain socket.

Why it stays correct:

- every call on the :class:`ssl.SSLObject` (handshake, read, write, close) is
  synchronous, so no two run at once, and what each one puts in the outgoing BIO is
  moved to the end of the ciphertext buffer at once: the bytes reach the socket in
  the order the TLS records were made, whoever wrote them (a sender, or the reader
  answering a TLS 1.3 key update);
- the buffer is written to the socket with non-blocking writes only; a task
  cancelled while waiting for the socket to take more leaves the rest in the buffer,
  and the next write sends it first. A record is never cut and dropped, so a
  cancelled sender never corrupts the stream: once encrypted, its bytes go out on
  the next write (or with the close), and the peer gets whole records.

TLS 1.2 renegotiation is not supported: a server refuses a client's (OpenSSL's
default), and one under way when a message is written breaks the connection (it
would need a read in the middle of a write). An end of stream without the TLS close alert counts as an end
of stream (what ``https_compatible=True`` does in trio).
"""

from __future__ import annotations

import os
import ssl
from typing import Final

import trio

__all__ = ["TlsSocketStream"]

_RECEIVE_SIZE: Final = 64 * 1024  # see streams.py: above this, glibc maps each buffer


class TlsSocketStream(trio.abc.Stream):
    """A TLS client or server connection over *socket_stream*; the handshake runs
    with :meth:`do_handshake` (or on the first read). Errors of the TLS layer and the
    socket are :class:`trio.BrokenResourceError` (the :class:`ssl.SSLError` as its
    cause, as in ``trio.SSLStream``)."""

    def __init__(
        self,
        socket_stream: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = socket_stream
        """The socket under the TLS connection."""
        self._socket = socket_stream.socket
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._unsent = bytearray()  # ciphertext not yet taken by the socket, in order
        self._send_lock = trio.StrictFIFOLock()
        self._handshaken = False
        self._receiving = False
        self._closed = False
        self._broken: BaseException | None = None  # the TLS layer failed, or a read
        self._write_failed: OSError | None = None  # a write failed (reads go on: the peer's
        # close frame may have arrived before it went away)

    # -- the handshake ---------------------------------------------------------------
    async def do_handshake(self) -> None:
        """Run the TLS handshake (once; later calls return at once)."""
        if self._handshaken:
            return
        while True:
            self._check_open()
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._send_out()
                await self._feed()
            except ssl.SSLError as exc:
                self._take_output()
                try:
                    self._write_some()  # the alert, if the socket takes it
                except OSError:
                    pass
                raise self._break(exc) from exc
        await self._send_out()  # the last flight (and a server's session tickets)
        self._handshaken = True

    # -- receiving -------------------------------------------------------------------
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Up to *max_bytes* bytes of plaintext; b"" at the end of the stream. Raises
        :class:`trio.BusyResourceError` if another task is receiving."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving from this TLS stream")
        self._receiving = True
        try:
            return await self._receive(max_bytes or _RECEIVE_SIZE)
        finally:
            self._receiving = False

    async def _receive(self, size: int) -> bytes:
        if not self._handshaken:
            await self.do_handshake()
        while True:
            self._check_open()
            try:
                data = self._tls.read(size)
            except ssl.SSLWantReadError:
                if self._outgoing.pending:
                    await self._send_out()
                await self._feed()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise self._break(exc) from exc
            if self._outgoing.pending:  # an answer to a post-handshake message
                await self._send_out()
            return data

    async def _feed(self) -> None:
        """Read what the socket has (waiting for it) into the incoming BIO."""
        sock = self._socket
        while True:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("the socket is closed")
            await trio.lowlevel.wait_readable(sock)
            fd = sock.fileno()
            if fd == -1:
                raise trio.ClosedResourceError("the socket is closed")
            try:
                data = os.read(fd, _RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._break(exc) from exc
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            return

    # -- sending ---------------------------------------------------------------------
    @property
    def can_write_now(self) -> bool:
        """Whether :meth:`write_nowait` may be called: handshake done, no ciphertext
        left over, no write under way, not closed or broken."""
        return (
            self._handshaken
            and not self._unsent
            and not self._send_lock.locked()
            and not self._closed
            and self._broken is None
            and self._write_failed is None
        )

    def write_nowait(self, data: bytes) -> bool:
        """Encrypt *data* and write it now, without waiting (only when
        :attr:`can_write_now`); True when the socket took all of it, False when
        some is left: it goes first on the next :meth:`send_all` or :meth:`flush`.
        Raises :class:`OSError` (:class:`trio.BrokenResourceError` is not one) when
        the link is broken."""
        self._encrypt(data)
        return self._write_some()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt *data* and send it after what is left over. Once called, the data
        goes out even if this task is cancelled while waiting for the socket."""
        self._check_open()
        try:
            self._encrypt(data)
        except OSError as exc:
            raise trio.BrokenResourceError(f"TLS connection broken: {exc}") from exc
        await self.flush()

    async def flush(self) -> None:
        """Send the ciphertext left over (waiting for the socket to take it)."""
        async with self._send_lock:
            sock = self._socket
            while self._unsent:
                try:
                    done = self._write_some()
                except OSError as exc:
                    raise trio.BrokenResourceError(f"TLS connection broken: {exc}") from exc
                if not done:
                    await trio.lowlevel.wait_writable(sock)

    async def _send_out(self) -> None:
        """Send what the TLS object wrote itself (handshake flights, alerts)."""
        self._take_output()
        if self._unsent:
            await self.flush()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._socket)

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken is not None or self._write_failed is not None:
            raise OSError(f"the TLS connection is broken: {self._broken or self._write_failed}")
        if self._closed:
            raise OSError("the TLS connection is closed")
        view = memoryview(data)
        try:
            while view:
                view = view[self._tls.write(view) :]
        except ssl.SSLWantReadError:  # renegotiation (TLS 1.2): refused
            self._broken = ssl.SSLError("TLS renegotiation is not supported")
            raise self._broken from None
        except ssl.SSLError as exc:
            self._broken = exc
            raise
        finally:
            self._take_output()

    def _take_output(self) -> None:
        if self._outgoing.pending:
            self._unsent += self._outgoing.read()

    def _write_some(self) -> bool:
        """One non-blocking write of the ciphertext left; True once none is left.
        Raises :class:`OSError` when the socket is closed or broken."""
        unsent = self._unsent
        if not unsent:
            return True
        fd = self._socket.fileno()
        if fd == -1:
            raise OSError("the socket is closed")
        try:
            sent = os.write(fd, unsent)  # trio's sockets are non-blocking
        except BlockingIOError:
            return False
        except OSError as exc:
            self._write_failed = exc
            raise
        del unsent[:sent]
        return not unsent

    # -- closing ---------------------------------------------------------------------
    async def aclose(self) -> None:
        """Send the TLS close alert if the socket takes it at once (after any
        ciphertext left over), then close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        # the alert goes after what is left over (one ordered buffer), even while
        # another task waits to write that: the socket closes under it next
        can_send = self._handshaken and self._broken is None and self._write_failed is None
        self._closed = True
        try:
            if can_send:
                try:
                    self._tls.unwrap()
                except ssl.SSLError:
                    pass  # SSLWantReadError: we do not wait for the peer's alert
                self._take_output()
                self._write_some()
        except OSError:
            pass
        finally:
            await self.transport_stream.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS connection is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(f"the TLS connection is broken: {self._broken}")

    def _break(self, exc: BaseException) -> trio.BrokenResourceError:
        self._broken = exc
        return trio.BrokenResourceError(f"TLS connection broken: {exc}")
