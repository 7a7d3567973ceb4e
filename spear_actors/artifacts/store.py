"""Resolve an artifact spec to verified bytes on local disk.

:class:`ArtifactStore` is what the node calls when a task is created. It picks the
path by source (see docs/artifacts.md):

- inline ``content``: size-capped, checked, hashed; nothing is written to disk;
- everything else (a local file, directory or archive, an ``http(s)://`` location)
  is copied or fetched into the content-addressed cache (:mod:`.cache`), verified
  against its sha256, unpacked if it is an archive, and handed out from there: a
  task's instances all run the bytes resolved when it was created, whatever
  happens to the original afterwards. A local directory is keyed by the sha256 of
  its manifest (every file's path, digest and mode, every symlink).

Concurrent resolves of one digest share one fetch ("single flight"): the first
caller does the work, the others wait for it and then use its entry. If the first
caller is cancelled, a waiter takes over rather than inheriting a cancellation that
was not its own.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import logging
import math
import shutil
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from ..errors import ErrorCode, SpearError
from ..metrics.events import events
from ..model import ArtifactSpec
from .cache import CacheEntry, ContentCache
from .fetch import FetchRules, RetryPolicy, download
from .location import Source, SourceKind, invalid, normalize_checksum, parse_source
from .manifest import FileRecord, Manifest
from .unpack import copy_tree_sync, unpack_sync
from .verify import HASH_CHUNK, check_digest, check_wasm, hash_file_sync, read_head_sync

__all__ = ["ArtifactStore", "ResolvedArtifact"]

log = logging.getLogger(__name__)

_MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedArtifact:
    """Where an artifact's bytes are on local disk (None for inline content)."""

    path: Path | None
    """A file, or the directory of an unpacked archive; None for inline content."""
    digest: str = ""
    """sha256 hex of the artifact as fetched (of the archive, for unpacked ones; of
    the manifest, for a local directory); empty for inline content."""


@dataclasses.dataclass(slots=True)
class _Flight:
    # One fetch in progress; waiters with the same `share` key take its outcome.
    share: tuple[str, str | None, bool]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    error: SpearError | None = None


def _local_error(shown: str, exc: OSError) -> SpearError:
    reason = exc.strerror or str(exc)
    details = {"location": shown}
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return SpearError(ErrorCode.NOT_FOUND, f"artifact {shown}: {reason}", details)
    if isinstance(exc, PermissionError):
        return SpearError(ErrorCode.PERMISSION_DENIED, f"artifact {shown}: {reason}", details)
    return invalid(shown, f"cannot read it: {reason}")


def _cache_error(root: Path, shown: str, exc: OSError) -> SpearError:
    # The cache's own disk failing is the node's problem, not the request's.
    reason = exc.strerror or str(exc)
    details = {"location": shown, "cache": str(root)}
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpearError(
            ErrorCode.RESOURCE_EXHAUSTED, f"artifact {shown}: artifact cache disk full ({reason})", details
        )
    return SpearError(ErrorCode.INTERNAL, f"artifact {shown}: artifact cache at {root} failed: {reason}", details)


def _copy_sync(src: Path, dest: Path, max_bytes: int, shown: str, check: Callable[[], None]) -> tuple[str, int]:
    # A private copy, hashed as it is written, so the bytes unpacked are exactly the
    # bytes verified even if the source file changes meanwhile.
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as f, dest.open("wb") as out:
        while chunk := f.read(HASH_CHUNK):
            check()
            size += len(chunk)
            if size > max_bytes:
                raise SpearError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"artifact {shown}: larger than the limit of {max_bytes} bytes",
                    {"location": shown, "limit": max_bytes},
                )
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    """Fetches, verifies and caches artifacts under ``data_dir/artifacts``.

    All limits are in bytes. One store per data directory at a time.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        max_cache_bytes: int = 4096 * _MiB,
        max_download_bytes: int = 512 * _MiB,
        max_inline_bytes: int = 4 * _MiB,
        max_unpacked_bytes: int = 1024 * _MiB,
        max_archive_members: int = 100_000,
        retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        http_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        fetch_rules: FetchRules | None = None,
    ) -> None:
        """*retries* / *backoff_base* / *backoff_max*: see :class:`~.fetch.RetryPolicy`;
        *http_timeout*: seconds for each connect / read / write of a download;
        *ssl_context*: for private CAs (default: httpx's, honouring SSL_CERT_FILE);
        *fetch_rules*: the operator's limits on downloads (total time, targets)."""
        self.data_dir = data_dir
        self.max_download_bytes = max_download_bytes
        self.max_inline_bytes = max_inline_bytes
        self.max_unpacked_bytes = max_unpacked_bytes
        self.max_archive_members = max_archive_members
        self.retry = RetryPolicy(retries, backoff_base, backoff_max)
        self.http_timeout = http_timeout
        self.cache = ContentCache(data_dir / "artifacts", max_cache_bytes)
        self._ssl_context = ssl_context
        self.fetch_rules = fetch_rules or FetchRules()
        self._flights: dict[str, _Flight] = {}

    # -- public API ---------------------------------------------------------------------

    async def resolve(self, spec: ArtifactSpec, *, pin: bool = False, deadline: float = math.inf) -> ResolvedArtifact:
        """Fetch (or find) and verify *spec*'s bytes; return where they are.

        With ``pin=True`` the result is pinned before this returns (no gap in which
        it could be evicted); release it with :meth:`unpin` (``resolved.digest``).
        A download ends at the trio time *deadline* (DEADLINE_EXCEEDED) at the latest.

        Raises :class:`SpearError`: INVALID_ARGUMENT (bad location or checksum,
        checksum mismatch, not WASM, malicious archive), NOT_FOUND (no such file,
        HTTP 404), PERMISSION_DENIED, RESOURCE_EXHAUSTED (a size cap, cache full of
        pinned artifacts), UNAVAILABLE (retries exhausted). Messages name the location.
        """
        await trio.lowlevel.checkpoint()  # like any trio call, even when all is in memory
        source = parse_source(spec)
        expected = normalize_checksum(spec.checksum, source.shown)
        wasm = spec.artifact_type == "wasm"
        if source.kind is SourceKind.INLINE:
            resolved = self._resolve_inline(spec, source, expected, wasm)
        elif source.kind is SourceKind.LOCAL and source.archive is None:
            resolved = await self._resolve_local(source, expected, wasm, deadline)
        else:
            resolved = await self._resolve_cached(source, expected, wasm, deadline)
        if pin:
            self.pin(resolved.digest)
        return resolved

    def pin(self, digest: str) -> None:
        """Keep *digest* in the cache (never evicted) until :meth:`unpin`. Pins count:
        call unpin once per pin. Synchronous, so pinning right after ``await resolve()``
        returns leaves no window for an eviction; ``resolve(pin=True)`` does exactly that."""
        self.cache.pin(digest)

    def unpin(self, digest: str) -> None:
        """Release one :meth:`pin` of *digest*; unknown or extra unpins are ignored."""
        self.cache.unpin(digest)

    async def stats(self) -> dict[str, Any]:
        """Cache counters (entries, bytes, max_bytes, pinned) for status output."""
        await self.cache.open()
        return self.cache.stats()

    # -- inline and in-place ------------------------------------------------------------

    def _resolve_inline(self, spec: ArtifactSpec, source: Source, expected: str | None, wasm: bool) -> ResolvedArtifact:
        content = spec.content or b""
        if len(content) > self.max_inline_bytes:
            raise SpearError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"artifact {source.shown}: inline content of {len(content)} bytes exceeds the limit "
                f"of {self.max_inline_bytes} bytes (serve it from a location instead)",
                {"location": source.shown, "size": len(content), "limit": self.max_inline_bytes},
            )
        digest = hashlib.sha256(content).hexdigest()
        check_digest(source.shown, expected, digest)
        if wasm:
            check_wasm(source.shown, content)
        return ResolvedArtifact(None, digest)

    async def _local_path(self, source: Source) -> tuple[Path, int]:
        """The resolved local path and its st_mode; NOT_FOUND and friends if unusable."""
        assert source.path is not None
        try:
            path = await trio.Path(source.path).resolve(strict=True)
            return Path(path), (await path.stat()).st_mode
        except OSError as exc:
            raise _local_error(source.shown, exc) from exc

    async def _resolve_local(
        self, source: Source, expected: str | None, wasm: bool, deadline: float
    ) -> ResolvedArtifact:
        # A local file goes through the cache like an archive (copied, hashed as it
        # is copied); a directory is copied whole, see _resolve_tree.
        path, mode = await self._local_path(source)
        if stat.S_ISDIR(mode):
            if expected is not None:
                raise invalid(source.shown, "is a directory; a checksum can only be verified for a file")
            if wasm:
                raise invalid(source.shown, "is a directory; a wasm artifact must be a module file")
            return await self._resolve_tree(source, path)
        if not stat.S_ISREG(mode):  # a fifo or device would hang or never end hashing
            raise invalid(source.shown, "is neither a regular file nor a directory")
        return await self._resolve_cached(source, expected, wasm, deadline)

    async def _resolve_tree(self, source: Source, path: Path) -> ResolvedArtifact:
        if self.cache.root.resolve().is_relative_to(path):
            raise invalid(source.shown, "is a directory holding the node's data directory; it cannot be copied")
        try:
            await self.cache.open()
            work = await self.cache.workdir()
        except OSError as exc:
            raise _cache_error(self.cache.root, source.shown, exc) from exc
        try:
            try:
                manifest = await trio.to_thread.run_sync(
                    functools.partial(
                        copy_tree_sync,
                        path,
                        ContentCache.content_of(work),
                        shown=source.shown,
                        max_bytes=self.max_unpacked_bytes,
                        max_members=self.max_archive_members,
                        check=trio.from_thread.check_cancelled,
                    )
                )
            except OSError as exc:
                raise _local_error(source.shown, exc) from exc
            canonical = json.dumps(manifest.to_json(), sort_keys=True, separators=(",", ":")).encode()
            digest = hashlib.sha256(canonical).hexdigest()
            while (flight := self._flights.get(digest)) is not None:
                await flight.done.wait()  # the same directory being committed right now
            entry = self.cache.lookup(digest)
            recorder = events()
            if entry is not None:
                await self.cache.touch(entry)
                if recorder is not None:
                    recorder.artifact_cache_hits.labels("directory").inc()
                return ResolvedArtifact(entry.content, digest)
            if recorder is not None:
                recorder.artifact_fetches.labels("directory", "OK").inc()  # copied, hashed
            flight = _Flight((source.location, None, False))
            self._flights[digest] = flight
            try:
                entry = await self.cache.commit(work, digest, "tree", manifest, shown=source.shown)
            except OSError as exc:
                raise _cache_error(self.cache.root, source.shown, exc) from exc
            finally:
                del self._flights[digest]
                flight.done.set()
            return ResolvedArtifact(entry.content, digest)
        finally:
            if work.exists():  # not renamed into the cache
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shutil.rmtree, work, True)

    # -- cached: remote files and all archives --------------------------------------------

    async def _resolve_cached(
        self, source: Source, expected: str | None, wasm: bool, deadline: float = math.inf
    ) -> ResolvedArtifact:
        if wasm and source.archive is not None:
            raise invalid(source.shown, "a wasm artifact is a single module, not an archive")
        local: Path | None = None
        if source.kind is SourceKind.HTTP:
            if expected is None:
                raise invalid(source.shown, "a checksum (sha256) is required for a remote location")
            digest = expected
        else:
            local, mode = await self._local_path(source)
            if not stat.S_ISREG(mode):
                raise invalid(source.shown, "an archive must be a regular file")
            try:
                digest, _ = await trio.to_thread.run_sync(hash_file_sync, local, trio.from_thread.check_cancelled)
            except OSError as exc:
                raise _local_error(source.shown, exc) from exc
            check_digest(source.shown, expected, digest)
        try:
            await self.cache.open()
        except OSError as exc:
            raise _cache_error(self.cache.root, source.shown, exc) from exc
        share = (source.location, source.archive, wasm)
        while True:
            await self._shared_flight(digest, share, source, local, wasm, deadline)
            # No checkpoint between the flight's end and here: the entry it left (or
            # found) cannot be evicted before it is pinned or handed out.
            entry = self.cache.lookup(digest)
            if entry is not None and entry.has_name(source.name):
                return ResolvedArtifact(entry.path(source.name), digest)

    async def _shared_flight(
        self,
        digest: str,
        share: tuple[str, str | None, bool],
        source: Source,
        local: Path | None,
        wasm: bool,
        deadline: float,
    ) -> None:
        while (flight := self._flights.get(digest)) is not None:
            await flight.done.wait()
            if flight.share != share:
                continue  # another location or type: its outcome is not ours to take
            if flight.error is not None:
                error = flight.error
                raise SpearError(error.code, error.message, dict(error.details))
            entry = self.cache.lookup(digest)
            if entry is not None and entry.has_name(source.name):
                return
            # The leader was cancelled, or its entry is already gone: lead ourselves.
        flight = _Flight(share)
        self._flights[digest] = flight
        self.cache.pin(digest)  # nobody evicts what we are verifying or building
        try:
            await self._materialize(digest, source, local, wasm, deadline)
        except SpearError as exc:
            flight.error = exc
            raise
        except OSError as exc:
            flight.error = _cache_error(self.cache.root, source.shown, exc)
            raise flight.error from exc
        finally:
            self.cache.unpin(digest)
            del self._flights[digest]
            flight.done.set()

    async def _materialize(self, digest: str, source: Source, local: Path | None, wasm: bool, deadline: float) -> None:
        recorder = events()
        kind = source.kind.name.lower()
        entry = self.cache.lookup(digest)
        if entry is not None:
            problem = await self.cache.verify(entry)
            if problem is None:
                await self._reuse(entry, source, wasm)
                if recorder is not None:
                    recorder.artifact_cache_hits.labels(kind).inc()
                return
            log.warning("artifact %r: cached copy is corrupted (%s); fetching it again", source.shown, problem)
            await self.cache.discard(digest)
        work = await self.cache.workdir()
        outcome = "OK"
        try:
            await self._build(work, digest, source, local, wasm, deadline)
        except SpearError as exc:
            outcome = exc.code.name
            raise
        except trio.Cancelled:
            outcome = "CANCELLED"
            raise
        except BaseException:
            outcome = "INTERNAL"
            raise
        finally:
            if recorder is not None:
                recorder.artifact_fetches.labels(kind, outcome).inc()
            with trio.CancelScope(shield=True):
                # Gone already after a successful commit (renamed into objects/).
                await trio.to_thread.run_sync(shutil.rmtree, work, True)

    async def _reuse(self, entry: CacheEntry, source: Source, wasm: bool) -> None:
        if wasm:
            head = await trio.to_thread.run_sync(read_head_sync, entry.path(source.name))
            check_wasm(source.shown, head)
        if not entry.has_name(source.name):
            await self.cache.add_name(entry, source.name)
        await self.cache.touch(entry)

    async def _build(
        self, work: Path, digest: str, source: Source, local: Path | None, wasm: bool, deadline: float
    ) -> None:
        blob = work / "fetched"
        if source.kind is SourceKind.HTTP:
            assert source.url is not None
            if self._ssl_context is None:
                self._ssl_context = await trio.to_thread.run_sync(httpx.create_ssl_context)
            actual, size = await download(
                source.url,
                source.shown,
                blob,
                max_bytes=self.max_download_bytes,
                timeout=self.http_timeout,
                retry=self.retry,
                ssl_context=self._ssl_context,
                rules=self.fetch_rules,
                deadline=deadline,
            )
            log.info("artifact %r: downloaded %d bytes (sha256 %s)", source.shown, size, actual)
        else:
            assert local is not None
            try:
                actual, size = await trio.to_thread.run_sync(
                    _copy_sync, local, blob, self.max_download_bytes, source.shown, trio.from_thread.check_cancelled
                )
            except FileNotFoundError as exc:
                raise _local_error(source.shown, exc) from exc
        check_digest(source.shown, digest, actual)
        content = ContentCache.content_of(work)
        if (fmt := source.archive) is not None:
            manifest = await trio.to_thread.run_sync(
                functools.partial(
                    unpack_sync,
                    blob,
                    fmt,
                    content,
                    shown=source.shown,
                    max_bytes=self.max_unpacked_bytes,
                    max_members=self.max_archive_members,
                    check=trio.from_thread.check_cancelled,
                )
            )
            await trio.to_thread.run_sync(blob.unlink)
            await self.cache.commit(work, digest, "tree", manifest, shown=source.shown)
            return
        if wasm:
            check_wasm(source.shown, await trio.to_thread.run_sync(read_head_sync, blob))

        def place_sync() -> None:
            # Process artifacts are meant to be run: make them executable (read-only,
            # like everything in the cache).
            target = content / source.name
            blob.rename(target)
            target.chmod(0o444 if wasm else 0o555)

        await trio.to_thread.run_sync(place_sync)
        manifest = Manifest({source.name: FileRecord(actual, size, not wasm)})
        await self.cache.commit(work, digest, "file", manifest, shown=source.shown)
