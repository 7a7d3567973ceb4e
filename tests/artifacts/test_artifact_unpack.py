"""Hostile archives are rejected before anything lands outside their directory."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.model import ArtifactSpec

from .artifact_helpers import sha, tar_dir, tar_file, tar_gz, tar_link, tar_special, zip_bytes
from .conftest import StoreFactory

OK = tar_file("ok.txt", b"fine")


def hostile_tars(outside: Path) -> dict[str, tuple[bytes, str]]:
    """name → (archive bytes, expected fragment of the error message)."""
    return {
        "absolute path": (tar_gz(OK, tar_file(str(outside / "abs"), b"evil")), "absolute path"),
        "dot-dot": (tar_gz(tar_file("../evil", b"evil")), "'..'"),
        "nested dot-dot": (tar_gz(tar_file("a/b/../../../evil", b"evil")), "'..'"),
        "symlink out": (tar_gz(tar_link("link", "../../outside")), "escapes"),
        "symlink absolute": (tar_gz(tar_link("link", str(outside))), "absolute path"),
        "symlink chain": (tar_gz(tar_link("a", "."), tar_link("b", "a/..")), "resolves outside"),
        "write through symlink": (
            tar_gz(tar_dir("sub"), tar_link("link", "sub"), tar_file("link/x", b"x")),
            "passes through the symlink",
        ),
        "symlink then file": (tar_gz(tar_link("x", "ok.txt"), tar_file("x", b"evil")), "duplicate"),
        "hard link out": (tar_gz(tar_link("h", "../../etc/passwd", hard=True)), "'..'"),
        "hard link to nothing": (tar_gz(tar_link("h", "ghost", hard=True)), "not a file unpacked"),
        "device": (tar_gz(tar_special("dev")), "special files"),
        "not an archive": (b"\x1f\x8b\x08garbage", "not a valid tar"),
    }


def hostile_zips(outside: Path) -> dict[str, tuple[bytes, str]]:
    return {
        "absolute path": (zip_bytes((str(outside / "abs"), b"evil")), "absolute path"),
        "dot-dot": (zip_bytes(("../evil", b"evil")), "'..'"),
        "backslash": (zip_bytes(("..\\evil", b"evil")), "backslash"),
        "drive": (zip_bytes(("C:/evil", b"evil")), "absolute path"),
        "symlink out": (zip_bytes(symlinks={"link": "../../../outside"}), "escapes"),
        "symlink chain": (zip_bytes(symlinks={"a": ".", "b": "a/.."}), "resolves outside"),
        "not an archive": (b"PK\x03\x04garbage", "not a valid zip"),
    }


CASES = [("tar.gz", name) for name in hostile_tars(Path("/x"))] + [("zip", name) for name in hostile_zips(Path("/x"))]


@pytest.mark.parametrize(("fmt", "case"), CASES)
async def test_hostile_archive_is_rejected(
    tmp_path: Path, make_store: StoreFactory, data_dir: Path, fmt: str, case: str
) -> None:
    outside = tmp_path / "outside"
    data, fragment = (hostile_tars if fmt == "tar.gz" else hostile_zips)(outside)[case]
    archive = tmp_path / f"app.{fmt}"
    archive.write_bytes(data)
    store = make_store()
    with pytest.raises(SpearError) as info:
        await store.resolve(ArtifactSpec(location=str(archive), checksum=sha(data)))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert fragment in info.value.message and str(archive) in info.value.message
    assert not outside.exists() and not (tmp_path / "evil").exists()
    assert (await store.stats())["entries"] == 0
    assert list((data_dir / "artifacts" / "tmp").iterdir()) == []


async def test_inner_symlinks_are_allowed(tmp_path: Path, make_store: StoreFactory) -> None:
    data = tar_gz(
        tar_file("lib/v1/tool", b"#!/bin/sh\n", 0o755),
        tar_link("lib/current", "v1"),
        tar_link("bin/tool", "../lib/current/tool"),
        tar_link("lib/v1/tool2", "lib/v1/tool", hard=True),
    )
    archive = tmp_path / "app.tgz"
    archive.write_bytes(data)
    resolved = await make_store().resolve(ArtifactSpec(location=str(archive)))
    assert resolved.path is not None
    assert (resolved.path / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert (resolved.path / "lib" / "v1" / "tool2").read_bytes() == b"#!/bin/sh\n"


async def test_unpacked_size_is_capped(tmp_path: Path, make_store: StoreFactory) -> None:
    data = tar_gz(tar_file("zeros", b"\0" * 1_000_000))  # compresses to about 1 KB
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(data)
    assert len(data) < 10_000
    with pytest.raises(SpearError, match="100000 bytes") as info:
        await make_store(max_unpacked_bytes=100_000).resolve(ArtifactSpec(location=str(archive)))
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED


async def test_member_count_is_capped(tmp_path: Path, make_store: StoreFactory) -> None:
    data = tar_gz(*(tar_file(f"f{i}", b"") for i in range(20)))
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(data)
    with pytest.raises(SpearError, match="more than 10 members") as info:
        await make_store(max_archive_members=10).resolve(ArtifactSpec(location=str(archive)))
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED


def test_tar_helper_keeps_hostile_names() -> None:
    # Guard the fixture itself: tarfile must not have sanitised the names we test.
    import io

    data = tar_gz(tar_file("/abs/x", b""), tar_file("../y", b""))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["/abs/x", "../y"]


async def test_plain_zipfile_archives_are_accepted(tmp_path: Path, make_store: StoreFactory) -> None:
    # Python's zipfile stores members with mode 0o600 and no file-type bits (as do
    # many other tools); such a member is a regular file, as `unzip` treats it.
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("app/run.py", "print('hi')\n")
        with zf.open("app/data.txt", "w") as member:
            member.write(b"data")
    archive = tmp_path / "plain.zip"
    archive.write_bytes(buffer.getvalue())
    resolved = await make_store().resolve(ArtifactSpec(location=str(archive)))
    assert resolved.path is not None
    assert (resolved.path / "app" / "run.py").read_text() == "print('hi')\n"
    assert (resolved.path / "app" / "data.txt").read_bytes() == b"data"
