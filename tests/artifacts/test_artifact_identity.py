"""The identity rule: artifact_id + version (see docs/artifacts.md)."""

from __future__ import annotations

from spear_actors.artifacts import describe_artifact, same_artifact
from spear_actors.model import ArtifactSpec

SUM_A, SUM_B = "a" * 64, "b" * 64


def test_id_and_version_identify() -> None:
    v1 = ArtifactSpec(artifact_id="calc", version="1", location="http://a/calc.py", checksum=SUM_A)
    mirror = ArtifactSpec(artifact_id="calc", version="1", location="http://b/calc.py", config={"x": 1})
    v2 = ArtifactSpec(artifact_id="calc", version="2", location="http://a/calc.py", checksum=SUM_A)
    assert same_artifact(v1, mirror)  # location / config do not take part
    assert not same_artifact(v1, v2)
    assert not same_artifact(v1, ArtifactSpec(artifact_id="other", version="1", checksum=SUM_A))


def test_same_version_with_other_bytes_is_another_artifact() -> None:
    a = ArtifactSpec(artifact_id="calc", version="1", checksum=SUM_A)
    b = ArtifactSpec(artifact_id="calc", version="1", checksum="sha256:" + SUM_B.upper())
    assert not same_artifact(a, b)
    assert same_artifact(a, ArtifactSpec(artifact_id="calc", version="1", checksum="SHA256:" + SUM_A))


def test_anonymous_specs_compare_by_what_they_point_at() -> None:
    assert same_artifact(ArtifactSpec(location="/x/a.py"), ArtifactSpec(location=" /x/a.py "))
    assert not same_artifact(ArtifactSpec(location="/x/a.py"), ArtifactSpec(location="/x/b.py"))
    assert same_artifact(ArtifactSpec(content=b"\0asm"), ArtifactSpec(content=b"\0asm", location="other"))
    assert not same_artifact(ArtifactSpec(content=b"\0asm"), ArtifactSpec(content=b"\0asm\1"))


def test_describe() -> None:
    assert describe_artifact(ArtifactSpec(artifact_id="calc", version="2")) == "'calc' version '2'"
    assert describe_artifact(ArtifactSpec(content=b"1234")) == "inline content (4 bytes)"
    assert describe_artifact(ArtifactSpec(location="http://u:p@h/x?sig=1")) == "http://u:***@h/x?sig=***"
