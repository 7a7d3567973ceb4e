"""Where an artifact's bytes come from: parsing ``location``, ``content`` and ``checksum``.

Pure functions, no I/O: the store decides what to do with a :class:`Source`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from ..errors import ErrorCode, SpearError
from ..model import ArtifactSpec

__all__ = [
    "ArchiveFormat",
    "Source",
    "SourceKind",
    "display_location",
    "invalid",
    "normalize_checksum",
    "parse_source",
    "redact_urls",
]


class SourceKind(enum.Enum):
    """How the bytes are obtained."""

    INLINE = "inline"
    """``spec.content`` carries them."""
    LOCAL = "local"
    """A path on this machine (plain or ``file://``)."""
    HTTP = "http"
    """``http://`` or ``https://``, downloaded with retries."""


class ArchiveFormat(enum.StrEnum):
    """Archives unpacked into a directory (the artifact is then that directory)."""

    TAR = "tar"
    """``.tar``, ``.tar.gz`` / ``.tgz``, ``.tar.bz2``, ``.tar.xz`` (compression is sniffed)."""
    ZIP = "zip"


# Longest suffix first, so ".tar.gz" wins over ".gz" style partial matches.
_ARCHIVE_SUFFIXES = (
    (".tar.gz", ArchiveFormat.TAR),
    (".tar.bz2", ArchiveFormat.TAR),
    (".tar.xz", ArchiveFormat.TAR),
    (".tgz", ArchiveFormat.TAR),
    (".tar", ArchiveFormat.TAR),
    (".zip", ArchiveFormat.ZIP),
)
_FORMAT_OVERRIDES = {
    "tar": ArchiveFormat.TAR,
    "tar.gz": ArchiveFormat.TAR,
    "tgz": ArchiveFormat.TAR,
    "zip": ArchiveFormat.ZIP,
    "none": None,
}
ARCHIVE_FORMAT_KEY = "archive_format"
"""``metadata`` key that overrides suffix detection: "tar.gz", "tar", "zip" or "none"."""

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DEFAULT_NAME = "artifact"


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """A parsed artifact source."""

    kind: SourceKind
    location: str
    """The location as the client gave it (for messages use :attr:`shown`)."""
    shown: str
    """The location with credentials and query values redacted, safe for errors and logs."""
    path: Path | None = None
    """The local path (LOCAL only), not yet resolved against the filesystem."""
    url: str | None = None
    """The URL to GET (HTTP only)."""
    name: str = _DEFAULT_NAME
    """File name a single-file artifact is stored under (the location's last component)."""
    archive: ArchiveFormat | None = None
    """Set when the bytes are an archive to unpack."""


def invalid(shown: str, reason: str, **details: object) -> SpearError:
    """An INVALID_ARGUMENT error naming the artifact location."""
    return SpearError(ErrorCode.INVALID_ARGUMENT, f"artifact {shown}: {reason}", {"location": shown, **details})


def display_location(location: str) -> str:
    """*location* without secrets: URLs may carry a password or a signed query string
    (presigned object-store URLs), and error messages travel to clients and logs."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return location
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = "&".join(f"{key}=***" for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+", re.IGNORECASE)


def redact_urls(text: str) -> str:
    """*text* with every http(s) URL in it passed through :func:`display_location`
    (for log lines and messages written by libraries that print whole URLs)."""
    return _URL_IN_TEXT.sub(lambda match: display_location(match.group(0)), text)


def normalize_checksum(checksum: str, shown: str) -> str | None:
    """The lower-case sha256 hex of *checksum* (``sha256:`` prefix allowed), None if empty."""
    value = checksum.strip().lower().removeprefix("sha256:")
    if not value:
        return None
    if not _SHA256_HEX.fullmatch(value):
        raise invalid(shown, f"checksum {checksum!r} is not a sha256 hex digest (64 hex digits)")
    return value


def _file_name(raw: str) -> str:
    # The last path component, if it is a usable file name; else a neutral default.
    name = PurePosixPath(raw).name
    if not name or name in (".", "..") or "\0" in name or "\\" in name:
        return _DEFAULT_NAME
    return name


def _archive_format(spec: ArtifactSpec, name: str, shown: str) -> ArchiveFormat | None:
    override = spec.metadata.get(ARCHIVE_FORMAT_KEY)
    if override is not None:
        if not isinstance(override, str) or override.lower() not in _FORMAT_OVERRIDES:
            allowed = ", ".join(_FORMAT_OVERRIDES)
            raise invalid(shown, f"metadata.{ARCHIVE_FORMAT_KEY} {override!r} is not one of {allowed}")
        return _FORMAT_OVERRIDES[override.lower()]
    lowered = name.lower()
    for suffix, fmt in _ARCHIVE_SUFFIXES:
        if lowered.endswith(suffix):
            return fmt
    return None


def parse_source(spec: ArtifactSpec) -> Source:
    """Classify *spec*'s bytes; INVALID_ARGUMENT for an unusable location.

    Inline ``content`` wins over ``location`` (which may then be any descriptive text).
    """
    if spec.content is not None:
        return Source(SourceKind.INLINE, spec.location, spec.location or "<inline content>")
    location = spec.location.strip()
    shown = display_location(location)
    if not location:
        raise invalid("<none>", "location is empty and there is no inline content")
    parts = urllib.parse.urlsplit(location)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise invalid(shown, "URL has no host")
        name = _file_name(urllib.parse.unquote(parts.path))
        archive = _archive_format(spec, name, shown)
        return Source(SourceKind.HTTP, location, shown, url=location, name=name, archive=archive)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise invalid(shown, f"file URL names a remote host {parts.netloc!r}")
        raw_path = urllib.request.url2pathname(parts.path)
    elif len(scheme) > 1 and "://" in location:
        # len > 1 keeps Windows-style "C:\\..." out of here; anything else with a
        # scheme is a protocol we do not speak.
        raise invalid(shown, f"unsupported location scheme {scheme!r} (use a path, file://, http(s)://)")
    else:
        raw_path = location
    if not raw_path or "\0" in raw_path:
        raise invalid(shown, "not a usable file path")
    name = _file_name(raw_path)
    archive = _archive_format(spec, name, shown)
    return Source(SourceKind.LOCAL, location, shown, path=Path(raw_path), name=name, archive=archive)
