"""Artifacts: turning an :class:`~spear_actors.model.ArtifactSpec` into local bytes."""

from .store import ArtifactStore, ResolvedArtifact

__all__ = ["ArtifactStore", "ResolvedArtifact"]
