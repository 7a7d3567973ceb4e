"""What a cache entry holds, so that corruption of any file is detected by its digest.

A manifest lists every regular file (sha256, size, executable bit) and every
symlink (target) of an entry's content directory. It is written with the entry and
checked when the entry is used again. Extra files are tolerated: a running process
may write next to its code (Python's ``__pycache__``), which is not corruption.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .verify import hash_file_sync

__all__ = ["FileRecord", "Manifest", "verify_tree_sync"]


@dataclasses.dataclass(frozen=True, slots=True)
class FileRecord:
    """One regular file of an entry."""

    sha256: str
    size: int
    executable: bool


@dataclasses.dataclass(slots=True)
class Manifest:
    """Files and symlinks under an entry's content directory, by relative posix path."""

    files: dict[str, FileRecord] = dataclasses.field(default_factory=dict)
    links: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes the entry occupies (hard links counted once per name: an upper bound)."""
        return sum(record.size for record in self.files.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able map."""
        return {
            "files": {
                name: {"sha256": r.sha256, "size": r.size, "executable": r.executable} for name, r in self.files.items()
            },
            "links": dict(self.links),
        }

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse :meth:`to_json` output; ValueError if it is not that shape."""
        if not isinstance(data, dict):
            raise ValueError("manifest is not a map")
        files: dict[str, FileRecord] = {}
        for name, raw in dict(data.get("files", {})).items():
            if not (
                isinstance(name, str)
                and isinstance(raw, dict)
                and isinstance(raw.get("sha256"), str)
                and type(raw.get("size")) is int
                and isinstance(raw.get("executable"), bool)
            ):
                raise ValueError(f"bad file record {name!r}")
            files[name] = FileRecord(raw["sha256"], raw["size"], raw["executable"])
        links = dict(data.get("links", {}))
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in links.items()):
            raise ValueError("bad symlink records")
        return cls(files, links)


def verify_tree_sync(root: Path, manifest: Manifest, check: Callable[[], None] = lambda: None) -> str | None:
    """None if *root* still holds what *manifest* says, else the first difference found.

    Blocking (run it in a thread); hashes every listed file.
    """
    for name, target in manifest.links.items():
        try:
            if os.readlink(root / name) != target:
                return f"symlink {name} changed"
        except OSError as exc:
            return f"symlink {name}: {exc.strerror or exc}"
    for name, record in manifest.files.items():
        path = root / name
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                return f"{name} is no longer a regular file"
            if st.st_size != record.size:
                return f"{name} has {st.st_size} bytes, expected {record.size}"
            digest, _ = hash_file_sync(path, check)
        except OSError as exc:
            return f"{name}: {exc.strerror or exc}"
        if digest != record.sha256:
            return f"{name} has sha256 {digest}, expected {record.sha256}"
    return None
