"""Unpacking tar and zip archives without letting them write outside their directory.

Nothing is delegated to ``tarfile.extractall`` / ``zipfile.extractall``: every
member is checked and written by hand, so both formats obey the same rules and
fail with the same errors:

- member names must be relative, without ``..`` or backslashes (INVALID_ARGUMENT);
- a member may not be written through a symlink, nor over an earlier member;
- symlinks must stay inside the directory, checked lexically per member and, once
  everything is unpacked, physically (``realpath``) so that chains of links
  (``a -> .``, ``b -> a/..``) cannot escape either;
- hard links may only name regular files unpacked earlier;
- devices, fifos and encrypted zip members are refused;
- total bytes written and member count are capped (RESOURCE_EXHAUSTED), counting
  the bytes actually decompressed, never the sizes the headers claim.

Blocking code: the store runs it in a worker thread.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..errors import ErrorCode, SpearError
from .location import ArchiveFormat, invalid
from .manifest import FileRecord, Manifest

__all__ = ["copy_tree_sync", "unpack_sync"]

_COPY_CHUNK = 256 * 1024
_MAX_LINK_TARGET = 4096
_DRIVE = re.compile(r"[A-Za-z]:")
# Errors that mean "these bytes are not a valid archive" (as opposed to disk errors).
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile, lzma.LZMAError)


class _Extractor:
    """Writes checked members under *root* and records them in a manifest."""

    def __init__(self, root: Path, shown: str, max_bytes: int, max_members: int, check: Callable[[], None]) -> None:
        self.root = root
        self.shown = shown
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.check = check
        self.manifest = Manifest()
        self.written = 0
        self.members = 0

    def reject(self, name: str, reason: str) -> SpearError:
        return invalid(self.shown, f"archive member {name!r} rejected: {reason}", member=name)

    def member_path(self, name: str) -> str | None:
        """The normalised relative path of *name*; None for the root itself."""
        self.check()
        self.members += 1
        if self.members > self.max_members:
            raise SpearError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"artifact {self.shown}: archive has more than {self.max_members} members",
                {"location": self.shown, "limit": self.max_members},
            )
        return self.normalise(name)

    def normalise(self, name: str) -> str | None:
        """*name* as a relative posix path without '.' parts; INVALID_ARGUMENT if unsafe."""
        if "\0" in name or "\\" in name:
            raise self.reject(name, "NUL or backslash in the name")
        if name.startswith("/") or _DRIVE.match(name):
            raise self.reject(name, "absolute path")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.reject(name, "'..' in the path")
        return "/".join(parts) or None

    def _dirs(self, name: str, parts: list[str]) -> Path:
        # Create (or walk) each directory of *parts* below the root, refusing to pass
        # through a symlink: lstat, never stat, so no link is ever followed.
        path = self.root
        for part in parts:
            path = path / part
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                path.mkdir(0o755)
                continue
            if stat.S_ISLNK(mode):
                raise self.reject(name, f"path passes through the symlink {part!r}")
            if not stat.S_ISDIR(mode):
                raise self.reject(name, f"path passes through the file {part!r}")
        return path

    def _target(self, name: str, rel: str) -> Path:
        parent, _, leaf = rel.rpartition("/")
        return self._dirs(name, parent.split("/") if parent else []) / leaf

    def add_dir(self, name: str, rel: str) -> None:
        self._dirs(name, rel.split("/"))

    def add_file(self, name: str, rel: str, source: IO[bytes], executable: bool) -> None:
        path = self._target(name, rel)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise self.reject(name, "duplicate member") from None
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                self.check()
                size += len(chunk)
                self.written += len(chunk)
                if self.written > self.max_bytes:
                    raise SpearError(
                        ErrorCode.RESOURCE_EXHAUSTED,
                        f"artifact {self.shown}: archive unpacks to more than {self.max_bytes} bytes",
                        {"location": self.shown, "limit": self.max_bytes},
                    )
                digest.update(chunk)
                out.write(chunk)
        # Cached code is read-only so a task cannot silently alter what the next task
        # gets; directories stay writable so eviction (and __pycache__) still work.
        path.chmod(0o555 if executable else 0o444)
        self.manifest.files[rel] = FileRecord(digest.hexdigest(), size, executable)

    def add_symlink(self, name: str, rel: str, target: str) -> None:
        if not target or "\0" in target or len(target) > _MAX_LINK_TARGET:
            raise self.reject(name, "unusable symlink target")
        if target.startswith("/"):
            raise self.reject(name, f"symlink to the absolute path {target!r}")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if resolved == ".." or resolved.startswith("../"):
            raise self.reject(name, f"symlink {target!r} escapes the artifact directory")
        path = self._target(name, rel)
        try:
            os.symlink(target, path)
        except FileExistsError:
            raise self.reject(name, "duplicate member") from None
        self.manifest.links[rel] = target

    def add_hardlink(self, name: str, rel: str, target_name: str) -> None:
        target = self.normalise(target_name)
        record = self.manifest.files.get(target or "")
        if target is None or record is None:
            raise self.reject(name, f"hard link to {target_name!r}, which is not a file unpacked before it")
        path = self._target(name, rel)
        try:
            os.link(self.root / target, path, follow_symlinks=False)
        except FileExistsError:
            raise self.reject(name, "duplicate member") from None
        self.manifest.files[rel] = record

    def finish(self) -> Manifest:
        """Check every symlink physically (a chain of links can escape where none
        does lexically), then hand back the manifest."""
        root = os.path.realpath(self.root)
        for rel, target in self.manifest.links.items():
            real = os.path.realpath(self.root / rel)
            if real != root and not real.startswith(root + os.sep):
                raise self.reject(rel, f"symlink {target!r} resolves outside the artifact directory")
        return self.manifest


def _unpack_tar(archive: Path, ex: _Extractor) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            rel = ex.member_path(member.name)
            if rel is None:
                continue
            if member.isdir():
                ex.add_dir(member.name, rel)
            elif member.isreg():
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise ex.reject(member.name, "no data")
                with source:
                    ex.add_file(member.name, rel, source, bool(member.mode & 0o111))
            elif member.issym():
                ex.add_symlink(member.name, rel, member.linkname)
            elif member.islnk():
                ex.add_hardlink(member.name, rel, member.linkname)
            else:
                raise ex.reject(member.name, "devices, fifos and other special files are not allowed")


def _unpack_zip(archive: Path, ex: _Extractor) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = ex.member_path(info.filename)
            if rel is None:
                continue
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            if info.flag_bits & 0x1:
                raise ex.reject(info.filename, "encrypted members are not supported")
            if stat.S_ISLNK(mode):
                # Unix zip tools store a symlink as a member whose data is the target.
                with zf.open(info) as source:
                    raw = source.read(_MAX_LINK_TARGET + 1)
                try:
                    target = raw.decode()
                except UnicodeDecodeError:
                    raise ex.reject(info.filename, "symlink target is not UTF-8") from None
                ex.add_symlink(info.filename, rel, target)
            elif info.is_dir():
                ex.add_dir(info.filename, rel)
            elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                # No file-type bits at all (Python's zipfile writes mode 0o600 that
                # way) is a regular file, as `unzip` treats it.
                raise ex.reject(info.filename, "devices, fifos and other special files are not allowed")
            else:
                with zf.open(info) as source:
                    ex.add_file(info.filename, rel, source, bool(mode & 0o111))


def unpack_sync(
    archive: Path,
    fmt: ArchiveFormat,
    dest: Path,
    *,
    shown: str,
    max_bytes: int,
    max_members: int,
    check: Callable[[], None] = lambda: None,
) -> Manifest:
    """Unpack *archive* into the existing empty directory *dest*; return its manifest.

    Raises SpearError INVALID_ARGUMENT for a corrupt or malicious archive and
    RESOURCE_EXHAUSTED past the caps; *dest* is then left half-filled for the caller
    to delete. *check* is called often (cancellation from the trio side).
    """
    ex = _Extractor(dest, shown, max_bytes, max_members, check)
    try:
        if fmt is ArchiveFormat.ZIP:
            _unpack_zip(archive, ex)
        else:
            _unpack_tar(archive, ex)
    except _CORRUPT as exc:
        raise invalid(shown, f"not a valid {fmt} archive: {exc}") from exc
    except NotImplementedError as exc:  # zipfile: a compression method it lacks
        raise invalid(shown, f"unsupported {fmt} archive: {exc}") from exc
    return ex.finish()


def copy_tree_sync(
    source: Path,
    dest: Path,
    *,
    shown: str,
    max_bytes: int,
    max_members: int,
    check: Callable[[], None] = lambda: None,
) -> Manifest:
    """Copy the local directory *source* into the empty directory *dest* under the
    archive rules (so a task runs a pinned copy, not files that may change later);
    return its manifest.

    Symlinks are copied as links and must stay inside the directory; devices, fifos
    and sockets are refused; bytes and entries are capped as for archives.
    """
    ex = _Extractor(dest, shown, max_bytes, max_members, check)
    for top, dirs, files in os.walk(source, followlinks=False):
        dirs.sort()
        base = Path(top).relative_to(source).as_posix()
        for name in [*dirs, *sorted(files)]:
            path = Path(top) / name
            member = name if base == "." else f"{base}/{name}"
            rel = ex.member_path(member)
            if rel is None:
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                ex.add_symlink(member, rel, os.readlink(path))
            elif stat.S_ISDIR(mode):
                ex.add_dir(member, rel)
            elif stat.S_ISREG(mode):
                with path.open("rb") as data:
                    ex.add_file(member, rel, data, bool(mode & 0o111))
            else:
                raise ex.reject(member, "devices, fifos and other special files are not allowed")
    return ex.finish()
