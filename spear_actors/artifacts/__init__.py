"""Artifacts: turning an :class:`~spear_actors.model.ArtifactSpec` into verified local bytes.

:class:`ArtifactStore` fetches (local path, ``file://``, ``http(s)://``, inline
content), verifies (sha256, WASM sniffing), unpacks archives safely and caches by
content. :func:`same_artifact` is the identity rule the manager applies when a
NEW_TASK names a task that exists. See docs/artifacts.md.
"""

from .identity import artifact_identity, describe_artifact, same_artifact
from .store import ArtifactStore, ResolvedArtifact

__all__ = ["ArtifactStore", "ResolvedArtifact", "artifact_identity", "describe_artifact", "same_artifact"]
