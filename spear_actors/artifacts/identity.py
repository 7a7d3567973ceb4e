"""When two artifact specs name the same artifact (see docs/artifacts.md, "Identity")."""

from __future__ import annotations

import hashlib

from ..model import ArtifactSpec
from .location import display_location

__all__ = ["artifact_identity", "describe_artifact", "same_artifact"]


def _checksum(spec: ArtifactSpec) -> str:
    return spec.checksum.strip().lower().removeprefix("sha256:")


def artifact_identity(spec: ArtifactSpec) -> tuple[str, ...]:
    """The key two specs are compared by.

    ``artifact_id`` + ``version`` when there is an id. An anonymous spec (no id) is
    identified by what it points at: its location and checksum, or the digest of its
    inline content.
    """
    if spec.artifact_id:
        return ("id", spec.artifact_id, spec.version)
    if spec.content is not None:
        return ("inline", hashlib.sha256(spec.content).hexdigest())
    return ("location", spec.location.strip(), _checksum(spec))


def same_artifact(a: ArtifactSpec, b: ArtifactSpec) -> bool:
    """True if *a* and *b* name the same artifact.

    Same identity (see :func:`artifact_identity`), and, when both specs carry a
    checksum, the same checksum: one id + version published twice with different
    bytes is two artifacts, and silently reusing the first would run the wrong code.
    ``location``, ``metadata`` and ``config`` do not take part: a mirror URL or a
    changed setting does not make a different artifact (the task keeps the spec it
    was created with).
    """
    if artifact_identity(a) != artifact_identity(b):
        return False
    ca, cb = _checksum(a), _checksum(b)
    return not (ca and cb and ca != cb)


def describe_artifact(spec: ArtifactSpec) -> str:
    """A short human name for messages, e.g. ``'hello' version '2'``."""
    if spec.artifact_id:
        return f"{spec.artifact_id!r} version {spec.version!r}" if spec.version else repr(spec.artifact_id)
    if spec.content is not None:
        return f"inline content ({len(spec.content)} bytes)"
    return display_location(spec.location)
