"""The cache's size limit: LRU eviction, pins, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from spear_actors.artifacts import ArtifactStore, ResolvedArtifact
from spear_actors.errors import ErrorCode, SpearError
from spear_actors.model import ArtifactSpec

from .artifact_helpers import ArtifactServer, sha
from .conftest import StoreFactory

BODIES = {name: name.encode() * 100 for name in ("a", "b", "c")}  # 100 bytes each


@pytest.fixture
def urls(server: ArtifactServer) -> dict[str, str]:
    return {name: server.serve(f"/{name}.bin", body) for name, body in BODIES.items()}


async def get(store: ArtifactStore, urls: dict[str, str], name: str, *, pin: bool = False) -> ResolvedArtifact:
    return await store.resolve(ArtifactSpec(location=urls[name], checksum=sha(BODIES[name])), pin=pin)


async def test_least_recently_used_is_evicted(
    server: ArtifactServer, urls: dict[str, str], make_store: StoreFactory
) -> None:
    store = make_store(max_cache_bytes=250)
    a = await get(store, urls, "a")
    b = await get(store, urls, "b")
    await get(store, urls, "a")  # a is now more recent than b
    await get(store, urls, "c")
    assert a.path is not None and a.path.exists()
    assert b.path is not None and not b.path.exists()
    assert (await store.stats())["entries"] == 2
    await get(store, urls, "b")
    assert server.hits == {"/a.bin": 1, "/b.bin": 2, "/c.bin": 1}


async def test_lru_order_survives_a_restart(
    server: ArtifactServer, urls: dict[str, str], make_store: StoreFactory
) -> None:
    first = make_store(max_cache_bytes=250)
    await get(first, urls, "a")
    b = await get(first, urls, "b")
    await get(first, urls, "a")
    await get(make_store(max_cache_bytes=250), urls, "c")
    assert b.path is not None and not b.path.exists()
    assert server.hits["/a.bin"] == 1


async def test_pinned_artifacts_are_never_evicted(
    server: ArtifactServer, urls: dict[str, str], make_store: StoreFactory
) -> None:
    store = make_store(max_cache_bytes=250)
    a = await get(store, urls, "a", pin=True)
    b = await get(store, urls, "b")
    await get(store, urls, "c")  # a is least recently used, but pinned: b goes
    assert a.path is not None and a.path.exists()
    assert b.path is not None and not b.path.exists()
    store.unpin(a.digest)
    await get(store, urls, "b")  # now a can go
    assert not a.path.exists()


async def test_full_of_pins_is_resource_exhausted(
    server: ArtifactServer, urls: dict[str, str], make_store: StoreFactory, data_dir: Path
) -> None:
    store = make_store(max_cache_bytes=250)
    a = await get(store, urls, "a")
    store.pin(a.digest)
    store.pin(a.digest)  # pins count
    await get(store, urls, "b", pin=True)
    store.unpin(a.digest)
    with pytest.raises(SpearError, match="live tasks") as info:
        await get(store, urls, "c")
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert urls["c"] in info.value.message and info.value.details["pinned_bytes"] == 200
    assert (await store.stats()) == {"entries": 2, "bytes": 200, "max_bytes": 250, "pinned": 2}
    assert list((data_dir / "artifacts" / "tmp").iterdir()) == []


async def test_artifact_larger_than_the_cache(
    server: ArtifactServer, urls: dict[str, str], make_store: StoreFactory
) -> None:
    with pytest.raises(SpearError, match="larger than the whole artifact cache") as info:
        await get(make_store(max_cache_bytes=50), urls, "a")
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert urls["a"] in info.value.message


async def test_unpin_is_forgiving(make_store: StoreFactory) -> None:
    store = make_store()
    store.unpin("0" * 64)
    store.unpin("")
    store.pin("")


async def test_restart_cleans_leftovers_and_unreadable_entries(
    server: ArtifactServer, urls: dict[str, str], make_store: StoreFactory, data_dir: Path
) -> None:
    await get(make_store(), urls, "a")
    root = data_dir / "artifacts"
    (root / "tmp" / "build-crashed").mkdir()
    broken = root / "objects" / ("f" * 64)
    broken.mkdir()
    (broken / "entry.json").write_text("{not json")
    store = make_store()
    assert (await store.stats())["entries"] == 1
    assert list((root / "tmp").iterdir()) == []
    assert not broken.exists()


async def test_lower_limit_at_restart_evicts(
    server: ArtifactServer, urls: dict[str, str], make_store: StoreFactory
) -> None:
    store = make_store()
    for name in BODIES:
        await get(store, urls, name)
    assert (await make_store(max_cache_bytes=150).stats())["entries"] == 1
