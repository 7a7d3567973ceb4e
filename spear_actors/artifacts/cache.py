"""The content-addressed artifact cache on disk, with LRU eviction and pins.

Layout under ``<data_dir>/artifacts``::

    objects/<sha256>/entry.json     what the entry holds (kind, manifest); its mtime
                                    is the entry's last use, for LRU across restarts
    objects/<sha256>/content/       the bytes: one file (under its name, plus hard-
                                    linked aliases) or an unpacked archive
    tmp/                            work in progress and entries being deleted

The key is the sha256 of the bytes as fetched (the archive, for unpacked trees), so
an entry never needs to be invalidated, only verified. An entry is built completely
under ``tmp/`` and renamed into ``objects/`` in one step: a crash leaves either no
entry or a whole one, and whatever is left in ``tmp/`` is deleted at the next start.
The in-memory index is rebuilt from ``objects/`` on start, so nothing else has to be
persisted. One store per data directory at a time.

Blocking filesystem work runs in worker threads; the index itself is only touched
from the trio thread, and every decision about it (which entries to evict, what is
reserved) is taken without a checkpoint in between.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import trio

from ..errors import ErrorCode, SpearError
from .manifest import Manifest, verify_tree_sync

__all__ = ["CacheEntry", "ContentCache", "EntryKind"]

log = logging.getLogger(__name__)

_ENTRY_FILE: Final = "entry.json"
_CONTENT: Final = "content"
_FORMAT: Final = 1

EntryKind = str
"""``"file"`` (a single file, path = the file) or ``"tree"`` (path = the directory)."""


@dataclasses.dataclass(slots=True)
class CacheEntry:
    """One artifact in the cache."""

    digest: str
    kind: EntryKind
    manifest: Manifest
    directory: Path
    """``objects/<digest>``."""

    @property
    def content(self) -> Path:
        """The directory holding the bytes."""
        return self.directory / _CONTENT

    @property
    def size(self) -> int:
        """Bytes charged against the cache limit."""
        return self.manifest.size

    def has_name(self, name: str) -> bool:
        """True if a single-file entry already holds its file under *name* (trees: always)."""
        return self.kind == "tree" or name in self.manifest.files

    def path(self, name: str) -> Path:
        """What a resolve hands out: the directory of a tree, or the file under *name*
        (the first name it was stored under if it has no such alias)."""
        if self.kind == "tree":
            return self.content
        if name not in self.manifest.files:
            name = next(iter(self.manifest.files))
        return self.content / name


def _entry_json(entry_kind: EntryKind, digest: str, manifest: Manifest) -> bytes:
    return json.dumps(
        {"format": _FORMAT, "digest": digest, "kind": entry_kind, "manifest": manifest.to_json()}
    ).encode()


def _write_atomic_sync(path: Path, data: bytes) -> None:
    # temp + fsync + rename: a reader sees the old file or the new one, never half.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_entry_sync(directory: Path) -> tuple[CacheEntry, int]:
    # ValueError / OSError when the entry is unusable.
    path = directory / _ENTRY_FILE
    raw: Any = json.loads(path.read_bytes())
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise ValueError("unknown entry format")
    digest, kind = raw.get("digest"), raw.get("kind")
    if digest != directory.name or kind not in ("file", "tree"):
        raise ValueError("entry does not match its directory")
    manifest = Manifest.from_json(raw.get("manifest"))
    if kind == "file" and not manifest.files:
        raise ValueError("single-file entry without a file")
    return CacheEntry(digest, kind, manifest, directory), path.stat().st_mtime_ns


def _remove_tree_sync(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class ContentCache:
    """The index of ``objects/`` plus the operations that keep disk and index in step."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._objects = root / "objects"
        self._tmp = root / "tmp"
        self._entries: collections.OrderedDict[str, CacheEntry] = collections.OrderedDict()
        """LRU order: least recently used first."""
        self._pins: collections.Counter[str] = collections.Counter()
        self._reserved = 0
        """Bytes of entries being committed, already counted against the limit."""
        self._opened = False
        self._last_stamp = 0
        self._open_lock = trio.Lock()

    # -- start-up -----------------------------------------------------------------

    def _load_sync(self) -> list[tuple[CacheEntry, int]]:
        self._objects.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)  # leftovers of a crash
        self._tmp.mkdir(parents=True, exist_ok=True)
        found = []
        for directory in self._objects.iterdir():
            try:
                found.append(_read_entry_sync(directory))
            except (OSError, ValueError) as exc:
                log.warning("artifact cache: dropping unreadable entry %s (%s)", directory.name, exc)
                self._trash_sync(directory)
        return found

    async def open(self) -> None:
        """Rebuild the index from disk (once; later calls return at once)."""
        async with self._open_lock:
            if self._opened:
                return
            found = await trio.to_thread.run_sync(self._load_sync)
            for entry, used in sorted(found, key=lambda pair: pair[1]):
                self._entries[entry.digest] = entry
                self._last_stamp = max(self._last_stamp, used)
            self._opened = True
            # The limit may have shrunk since the last run; nothing is pinned yet.
            excess = self._choose_victims(0, exclude=None, shown=None)
            for entry in excess:
                del self._entries[entry.digest]
            await self._delete(excess)

    # -- queries --------------------------------------------------------------------

    def lookup(self, digest: str) -> CacheEntry | None:
        """The entry for *digest*, if cached (not yet verified)."""
        return self._entries.get(digest)

    @property
    def total_bytes(self) -> int:
        """Bytes of all entries in the index."""
        return sum(entry.size for entry in self._entries.values())

    def stats(self) -> dict[str, Any]:
        """Counters for status output."""
        return {
            "entries": len(self._entries),
            "bytes": self.total_bytes,
            "max_bytes": self.max_bytes,
            "pinned": sum(1 for digest in self._entries if self._pins[digest]),
        }

    # -- pins -----------------------------------------------------------------------

    def pin(self, digest: str) -> None:
        """Protect *digest* from eviction until a matching :meth:`unpin` (counted)."""
        if digest:
            self._pins[digest] += 1

    def unpin(self, digest: str) -> None:
        """Undo one :meth:`pin`; extra unpins are ignored (it is called from cleanup code)."""
        if self._pins[digest] > 1:
            self._pins[digest] -= 1
        else:
            self._pins.pop(digest, None)

    def pinned(self, digest: str) -> bool:
        """True while *digest* has pins."""
        return self._pins[digest] > 0

    # -- use and verification ---------------------------------------------------------

    async def verify(self, entry: CacheEntry) -> str | None:
        """None if *entry*'s content still matches its manifest, else what differs."""
        return await trio.to_thread.run_sync(
            verify_tree_sync, entry.content, entry.manifest, trio.from_thread.check_cancelled
        )

    def _stamp(self) -> int:
        # Strictly increasing: the kernel's file clock is coarse (jiffies), and two
        # uses in one tick must still keep their order after a restart.
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        return self._last_stamp

    async def touch(self, entry: CacheEntry) -> None:
        """Record a use: most recently used in memory, and on disk (entry.json's mtime)
        so the order survives a restart."""
        stamp = self._stamp()
        try:
            await trio.to_thread.run_sync(functools.partial(os.utime, entry.directory / _ENTRY_FILE, ns=(stamp, stamp)))
        except OSError as exc:  # LRU order is advisory; never fail a resolve for it
            log.debug("artifact cache: cannot touch %s: %s", entry.digest, exc)
        if entry.digest in self._entries:
            self._entries.move_to_end(entry.digest)

    async def discard(self, digest: str) -> None:
        """Drop *digest* from the index and delete it from disk (a corrupted entry)."""
        entry = self._entries.pop(digest, None)
        if entry is not None:
            await self._delete([entry])

    async def add_name(self, entry: CacheEntry, name: str) -> None:
        """Give a single-file entry another name (a hard link): the same bytes fetched
        from a location whose last component differs."""
        first, record = next(iter(entry.manifest.files.items()))
        manifest = Manifest({**entry.manifest.files, name: record}, dict(entry.manifest.links))

        def link_sync() -> None:
            target = entry.content / name
            if not target.exists():
                os.link(entry.content / first, target)
            _write_atomic_sync(entry.directory / _ENTRY_FILE, _entry_json(entry.kind, entry.digest, manifest))

        await trio.to_thread.run_sync(link_sync)
        entry.manifest = manifest

    # -- building and committing -------------------------------------------------------

    async def workdir(self) -> Path:
        """A fresh directory under ``tmp/`` with an empty ``content/`` to build an entry in."""

        def make_sync() -> Path:
            work = Path(tempfile.mkdtemp(dir=self._tmp, prefix="build-"))
            (work / _CONTENT).mkdir()
            return work

        return await trio.to_thread.run_sync(make_sync)

    @staticmethod
    def content_of(work: Path) -> Path:
        """Where the bytes go inside a :meth:`workdir`."""
        return work / _CONTENT

    async def commit(self, work: Path, digest: str, kind: EntryKind, manifest: Manifest, *, shown: str) -> CacheEntry:
        """Move the finished *work* directory into the cache as *digest*.

        Evicts least-recently-used unpinned entries to make room; RESOURCE_EXHAUSTED
        naming *shown* (the location) and nothing changes if it cannot fit even then.
        """
        size = manifest.size
        victims = self._choose_victims(size, exclude=digest, shown=shown)
        # Index decisions are final from here: victims leave it now, the new entry's
        # bytes are reserved until it is in.
        for victim in victims:
            self._entries.pop(victim.digest, None)
        self._reserved += size
        try:
            await self._delete(victims)
            target = self._objects / digest

            stamp = self._stamp()

            def install_sync() -> None:
                _write_atomic_sync(work / _ENTRY_FILE, _entry_json(kind, digest, manifest))
                os.utime(work / _ENTRY_FILE, ns=(stamp, stamp))
                if target.exists():  # a stale directory the index does not know
                    self._trash_sync(target)
                os.rename(work, target)

            await trio.to_thread.run_sync(install_sync)
        finally:
            self._reserved -= size
        entry = CacheEntry(digest, kind, manifest, target)
        self._entries[digest] = entry
        return entry

    def _choose_victims(self, incoming: int, *, exclude: str | None, shown: str | None) -> list[CacheEntry]:
        # Least recently used first, never a pinned entry nor the one being added.
        # With *shown* (a location) it is strict: RESOURCE_EXHAUSTED if room cannot be
        # made; without, it frees what it can (start-up after the limit shrank).
        if shown is not None and incoming > self.max_bytes:
            raise SpearError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"artifact {shown}: {incoming} bytes is larger than the whole artifact cache ({self.max_bytes} bytes)",
                {"location": shown, "size": incoming, "limit": self.max_bytes},
            )
        excess = self.total_bytes + self._reserved + incoming - self.max_bytes
        victims: list[CacheEntry] = []
        for entry in self._entries.values():
            if excess <= 0:
                break
            if entry.digest == exclude or self._pins[entry.digest]:
                continue
            victims.append(entry)
            excess -= entry.size
        if excess > 0 and shown is not None:
            pinned = sum(e.size for e in self._entries.values() if self._pins[e.digest])
            raise SpearError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"artifact {shown}: artifact cache full: {incoming} more bytes do not fit in "
                f"{self.max_bytes} ({pinned} bytes are held by live tasks, {self._reserved} being added)",
                {
                    "location": shown,
                    "size": incoming,
                    "limit": self.max_bytes,
                    "pinned_bytes": pinned,
                    "retry_after_ms": 1000,
                },
            )
        return victims

    async def _delete(self, entries: list[CacheEntry]) -> None:
        for entry in entries:
            log.info("artifact cache: evicting %s (%d bytes)", entry.digest, entry.size)
        if entries:

            def delete_sync() -> None:
                for entry in entries:
                    self._trash_sync(entry.directory)

            await trio.to_thread.run_sync(delete_sync)

    def _trash_sync(self, directory: Path) -> None:
        # Rename first (atomic: the entry is gone from objects/ at once), then delete.
        try:
            trash = Path(tempfile.mkdtemp(dir=self._tmp, prefix="trash-"))
            os.rename(directory, trash / directory.name)
        except OSError:
            _remove_tree_sync(directory)
            return
        _remove_tree_sync(trash)
