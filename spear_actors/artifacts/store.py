"""Resolve an artifact spec to a file on local disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from ..errors import ErrorCode, SpearError
from ..model import ArtifactSpec

__all__ = ["ArtifactStore", "ResolvedArtifact"]


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedArtifact:
    """Where an artifact's bytes are on local disk (None for inline content)."""

    path: Path | None
    digest: str = ""


class ArtifactStore:
    """Resolves artifact locations; local paths and ``file://`` only (so far)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def resolve(self, spec: ArtifactSpec) -> ResolvedArtifact:
        """Return the local path of *spec*; NOT_FOUND / INVALID_ARGUMENT when unusable."""
        if spec.content is not None:
            return ResolvedArtifact(None)
        location = spec.location.removeprefix("file://")
        if "://" in location:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"unsupported artifact location {spec.location!r}")
        path = trio.Path(location)
        if not await path.exists():
            raise SpearError(ErrorCode.NOT_FOUND, f"artifact {spec.location!r} does not exist")
        return ResolvedArtifact(Path(await path.resolve()))
