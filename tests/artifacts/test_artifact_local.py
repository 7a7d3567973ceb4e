"""Local paths, file:// URLs, local archives and inline content."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.model import ArtifactSpec

from .artifact_helpers import WASM_MODULE, sha, tar_file, tar_gz, zip_bytes
from .conftest import StoreFactory

SCRIPT = b"print('hello')\n"


async def test_local_file_is_pinned_into_the_cache(tmp_path: Path, make_store: StoreFactory, data_dir: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_bytes(SCRIPT)
    resolved = await make_store().resolve(ArtifactSpec(location=str(script)))
    assert resolved.path is not None and resolved.path.is_relative_to(data_dir)
    assert resolved.path.read_bytes() == SCRIPT and resolved.digest == sha(SCRIPT)
    script.write_bytes(b"print('edited')\n")  # the task keeps the bytes it was created from
    assert resolved.path.read_bytes() == SCRIPT


async def test_file_url_and_relative_path(
    tmp_path: Path, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "my agent.py"
    script.write_bytes(SCRIPT)
    store = make_store()
    by_url = await store.resolve(ArtifactSpec(location=script.as_uri(), checksum=sha(SCRIPT)))
    monkeypatch.chdir(tmp_path)
    by_relative = await store.resolve(ArtifactSpec(location="my agent.py"))
    assert by_url.path == by_relative.path
    assert by_url.path is not None and by_url.path.read_bytes() == SCRIPT


async def test_missing_local_file_is_not_found(tmp_path: Path, make_store: StoreFactory) -> None:
    missing = str(tmp_path / "nope.py")
    with pytest.raises(SpearError) as info:
        await make_store().resolve(ArtifactSpec(location=missing))
    assert info.value.code is ErrorCode.NOT_FOUND
    assert missing in info.value.message


async def test_local_checksum_is_verified(tmp_path: Path, make_store: StoreFactory) -> None:
    script = tmp_path / "agent.py"
    script.write_bytes(SCRIPT)
    with pytest.raises(SpearError, match="checksum mismatch") as info:
        await make_store().resolve(ArtifactSpec(location=str(script), checksum=sha(b"other")))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_local_directory_is_pinned_into_the_cache(
    tmp_path: Path, make_store: StoreFactory, data_dir: Path
) -> None:
    source = tmp_path / "app"
    (source / "lib").mkdir(parents=True)
    (source / "run").write_bytes(SCRIPT)
    (source / "run").chmod(0o755)
    (source / "lib" / "util.py").write_bytes(b"X = 1\n")
    (source / "current").symlink_to("lib")
    store = make_store()
    resolved = await store.resolve(ArtifactSpec(location=str(source)))
    assert resolved.path is not None and resolved.path.is_relative_to(data_dir) and resolved.digest
    assert (resolved.path / "run").read_bytes() == SCRIPT and os.access(resolved.path / "run", os.X_OK)
    assert (resolved.path / "current" / "util.py").read_bytes() == b"X = 1\n"
    (source / "run").write_bytes(b"edited")  # the copy does not follow the source
    assert (resolved.path / "run").read_bytes() == SCRIPT
    again = await store.resolve(ArtifactSpec(location=str(source)))
    assert again.digest != resolved.digest and again.path is not None
    assert (again.path / "run").read_bytes() == b"edited"
    with pytest.raises(SpearError, match="directory") as info:
        await store.resolve(ArtifactSpec(location=str(source), checksum=sha(b"")))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_local_directory_with_an_escaping_symlink_is_refused(tmp_path: Path, make_store: StoreFactory) -> None:
    source = tmp_path / "app"
    source.mkdir()
    (source / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SpearError, match="absolute path") as info:
        await make_store().resolve(ArtifactSpec(location=str(source)))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_directory_holding_the_data_dir_is_refused(tmp_path: Path, make_store: StoreFactory) -> None:
    with pytest.raises(SpearError, match="data directory") as info:
        await make_store().resolve(ArtifactSpec(location=str(tmp_path)))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_special_files_are_refused(tmp_path: Path, make_store: StoreFactory) -> None:
    fifo = tmp_path / "agent.py"
    os.mkfifo(fifo)
    with pytest.raises(SpearError, match="regular file") as info:
        await make_store().resolve(ArtifactSpec(location=str(fifo)))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("location", ["s3://bucket/agent.py", "ftp://host/agent.py", "file://other-host/x"])
async def test_unsupported_locations(make_store: StoreFactory, location: str) -> None:
    with pytest.raises(SpearError) as info:
        await make_store().resolve(ArtifactSpec(location=location))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert location in info.value.message


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".zip"])
async def test_local_archive_is_unpacked_into_the_cache(
    tmp_path: Path, make_store: StoreFactory, data_dir: Path, suffix: str
) -> None:
    if suffix == ".zip":
        data = zip_bytes(("bin/run", SCRIPT), ("README", b"hi"))
    else:
        data = tar_gz(tar_file("bin/run", SCRIPT, 0o755), tar_file("README", b"hi"))
    archive = tmp_path / f"app{suffix}"
    archive.write_bytes(data)
    store = make_store()
    resolved = await store.resolve(ArtifactSpec(location=str(archive), checksum=sha(data)))
    assert resolved.path is not None and resolved.path.is_dir()
    assert resolved.path.is_relative_to(data_dir)
    assert resolved.digest == sha(data)
    assert (resolved.path / "bin" / "run").read_bytes() == SCRIPT
    assert os.access(resolved.path / "bin" / "run", os.X_OK)
    archive.unlink()
    archive.write_bytes(data)  # same bytes again: the same entry, no second unpack
    assert await store.resolve(ArtifactSpec(location=str(archive))) == resolved


async def test_archive_format_override(tmp_path: Path, make_store: StoreFactory) -> None:
    bundle = tmp_path / "bundle"
    bundle.write_bytes(zip_bytes(("run", SCRIPT)))
    store = make_store()
    resolved = await store.resolve(ArtifactSpec(location=str(bundle), metadata={"archive_format": "zip"}))
    assert resolved.path is not None and (resolved.path / "run").read_bytes() == SCRIPT
    with pytest.raises(SpearError, match="archive_format") as info:
        await store.resolve(ArtifactSpec(location=str(bundle), metadata={"archive_format": "rar"}))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_tree_corruption_is_repaired_from_the_source(tmp_path: Path, make_store: StoreFactory) -> None:
    data = tar_gz(tar_file("run", SCRIPT, 0o755))
    archive = tmp_path / "app.tar.gz"
    archive.write_bytes(data)
    store = make_store()
    resolved = await store.resolve(ArtifactSpec(location=str(archive)))
    assert resolved.path is not None
    (resolved.path / "run").chmod(0o755)
    (resolved.path / "run").write_bytes(b"tampered")
    again = await store.resolve(ArtifactSpec(location=str(archive)))
    assert again.path is not None and (again.path / "run").read_bytes() == SCRIPT


# -- WASM and inline content -------------------------------------------------------------

WAT = b"""\xef\xbb\xbf;; a comment
(; a (; nested ;) block comment ;)
(module (func (export "run")))
"""


@pytest.mark.parametrize("content", [WASM_MODULE, WAT], ids=["binary", "text"])
async def test_inline_wasm(make_store: StoreFactory, content: bytes) -> None:
    resolved = await make_store().resolve(ArtifactSpec(artifact_type="wasm", content=content, checksum=sha(content)))
    assert resolved.path is None and resolved.digest == sha(content)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04zip", b"\xff\xfe\x00garbage", b";; only a comment\n"])
async def test_inline_non_wasm_is_rejected(make_store: StoreFactory, content: bytes) -> None:
    with pytest.raises(SpearError, match="neither a binary module") as info:
        await make_store().resolve(ArtifactSpec(artifact_type="wasm", content=content))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_inline_size_cap(make_store: StoreFactory) -> None:
    content = WASM_MODULE + b"\0" * 2000
    with pytest.raises(SpearError, match="1024") as info:
        await make_store(max_inline_bytes=1024).resolve(ArtifactSpec(artifact_type="wasm", content=content))
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED


async def test_inline_checksum_mismatch(make_store: StoreFactory) -> None:
    with pytest.raises(SpearError, match="checksum mismatch") as info:
        await make_store().resolve(ArtifactSpec(artifact_type="wasm", content=WASM_MODULE, checksum=sha(b"x")))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_local_wasm_file_is_sniffed(tmp_path: Path, make_store: StoreFactory) -> None:
    good, bad = tmp_path / "good.wasm", tmp_path / "bad.wasm"
    good.write_bytes(WASM_MODULE)
    bad.write_bytes(b"#!/bin/sh\n")
    store = make_store()
    resolved = await store.resolve(ArtifactSpec(artifact_type="wasm", location=str(good)))
    assert resolved.path is not None and resolved.path.read_bytes() == WASM_MODULE
    with pytest.raises(SpearError, match=str(bad)) as info:
        await store.resolve(ArtifactSpec(artifact_type="wasm", location=str(bad)))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_wasm_archive_is_rejected(tmp_path: Path, make_store: StoreFactory) -> None:
    archive = tmp_path / "mod.tar.gz"
    archive.write_bytes(tar_gz(tar_file("mod.wasm", WASM_MODULE)))
    with pytest.raises(SpearError, match="not an archive") as info:
        await make_store().resolve(ArtifactSpec(artifact_type="wasm", location=str(archive)))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
