"""Remote artifacts against a real HTTP server: verify, share, cache, retry, fail."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing

from spear_actors.artifacts import ArtifactStore
from spear_actors.artifacts.fetch import FetchRules
from spear_actors.errors import ErrorCode, SpearError
from spear_actors.model import ArtifactSpec

from .artifact_helpers import WASM_MODULE, ArtifactServer, sha, tar_file, tar_gz
from .conftest import StoreFactory

# On the autojumping mock clock a total download deadline would be jumped to while
# the loop waits for a worker thread (the file writes); these tests are about the
# retry schedule, so they run without one.
NO_TOTAL = FetchRules(total_timeout_s=float("inf"))

SCRIPT = b"#!/bin/sh\necho hello\n"


def spec(location: str, checksum: str = "", **fields: object) -> ArtifactSpec:
    return ArtifactSpec(artifact_id="a", location=location, checksum=checksum, **fields)  # type: ignore[arg-type]


def cached_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "artifacts").rglob("*") if p.is_file())


async def test_remote_fetch_is_verified_and_cached(server: ArtifactServer, make_store: StoreFactory) -> None:
    url = server.serve("/tools/agent.sh", SCRIPT)
    store = make_store()
    resolved = await store.resolve(spec(url, sha(SCRIPT)))
    assert resolved.digest == sha(SCRIPT)
    assert resolved.path is not None
    assert resolved.path.name == "agent.sh"  # the runtime may rely on the name (.py)
    assert resolved.path.read_bytes() == SCRIPT
    assert os.access(resolved.path, os.X_OK)  # process artifacts are runnable
    assert resolved.path.stat().st_mode & 0o222 == 0  # and read-only (mode: tests may run as root)
    again = await store.resolve(spec(url, "sha256:" + sha(SCRIPT).upper()))
    assert again == resolved
    assert server.hits["/tools/agent.sh"] == 1


async def test_checksum_mismatch_names_both_digests_and_caches_nothing(
    server: ArtifactServer, make_store: StoreFactory, data_dir: Path
) -> None:
    url = server.serve("/agent.sh", SCRIPT)
    wrong = sha(b"something else")
    store = make_store()
    with pytest.raises(SpearError) as info:
        await store.resolve(spec(url, wrong))
    error = info.value
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert wrong in error.message and sha(SCRIPT) in error.message and url in error.message
    assert error.details["expected"] == wrong and error.details["actual"] == sha(SCRIPT)
    assert cached_files(data_dir) == []
    assert (await store.stats())["entries"] == 0


async def test_remote_location_requires_a_checksum(server: ArtifactServer, make_store: StoreFactory) -> None:
    url = server.serve("/agent.sh", SCRIPT)
    with pytest.raises(SpearError, match="checksum") as info:
        await make_store().resolve(spec(url))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert server.hits["/agent.sh"] == 0


async def test_malformed_checksum_is_rejected(make_store: StoreFactory) -> None:
    with pytest.raises(SpearError, match="not a sha256") as info:
        await make_store().resolve(spec("http://127.0.0.1:1/x", "abc"))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_fifty_concurrent_resolves_make_one_download(server: ArtifactServer, make_store: StoreFactory) -> None:
    url = server.serve("/agent.sh", SCRIPT)
    server.gate = trio.Event()  # hold the one download open until all 50 are waiting
    store = make_store()
    results = []

    async def one() -> None:
        results.append(await store.resolve(spec(url, sha(SCRIPT))))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
        while server.hits["/agent.sh"] == 0:
            await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        server.gate.set()
    assert server.hits["/agent.sh"] == 1
    assert len(results) == 50 and len(set(results)) == 1


async def test_concurrent_failure_is_shared_not_repeated(server: ArtifactServer, make_store: StoreFactory) -> None:
    server.gate = trio.Event()
    url = server.url("/missing.sh")
    store = make_store()
    codes = []

    async def one() -> None:
        try:
            await store.resolve(spec(url, sha(SCRIPT)))
        except SpearError as exc:
            codes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
        while server.hits["/missing.sh"] == 0:
            await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        server.gate.set()
    assert codes == [ErrorCode.NOT_FOUND] * 10
    assert server.hits["/missing.sh"] == 1


async def test_cache_survives_a_restart_without_the_server(server: ArtifactServer, make_store: StoreFactory) -> None:
    url = server.serve("/agent.sh", SCRIPT)
    first = await make_store().resolve(spec(url, sha(SCRIPT)))
    server.stop()
    await trio.sleep(0)
    restarted = make_store()
    again = await restarted.resolve(spec(url, sha(SCRIPT)))
    assert again == first
    assert server.hits["/agent.sh"] == 1
    assert (await restarted.stats())["entries"] == 1


@pytest.mark.parametrize("damage", ["rewrite", "delete"])
async def test_corrupted_cache_entry_is_fetched_again(
    server: ArtifactServer, make_store: StoreFactory, damage: str
) -> None:
    url = server.serve("/agent.sh", SCRIPT)
    store = make_store()
    resolved = await store.resolve(spec(url, sha(SCRIPT)))
    assert resolved.path is not None
    resolved.path.chmod(0o644)
    if damage == "rewrite":
        resolved.path.write_bytes(SCRIPT.replace(b"hello", b"HELLO"))  # same size, other bytes
    else:
        resolved.path.unlink()
    # A new store too: verification must not depend on in-memory state.
    for current in (store, make_store()):
        again = await current.resolve(spec(url, sha(SCRIPT)))
        assert again.path is not None and again.path.read_bytes() == SCRIPT
    assert server.hits["/agent.sh"] == 2


async def test_404_fails_fast_with_one_request(server: ArtifactServer, make_store: StoreFactory) -> None:
    url = server.url("/nope.sh")
    with pytest.raises(SpearError) as info:
        await make_store(retries=5).resolve(spec(url, sha(SCRIPT)))
    assert info.value.code is ErrorCode.NOT_FOUND
    assert url in info.value.message and "404" in info.value.message
    assert server.hits["/nope.sh"] == 1


@pytest.mark.parametrize(("status", "code"), [(403, ErrorCode.PERMISSION_DENIED), (400, ErrorCode.INVALID_ARGUMENT)])
async def test_other_4xx_fail_fast(
    server: ArtifactServer, make_store: StoreFactory, status: int, code: ErrorCode
) -> None:
    url = server.serve("/x.sh", b"", status=status)
    with pytest.raises(SpearError) as info:
        await make_store().resolve(spec(url, sha(SCRIPT)))
    assert info.value.code is code and str(status) in info.value.message
    assert server.hits["/x.sh"] == 1


async def test_503_is_retried_with_backoff(
    server: ArtifactServer, data_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    url = server.serve("/agent.sh", SCRIPT, failures=[503, 503, 502])
    store = ArtifactStore(data_dir, retries=3, backoff_base=1.0, backoff_max=60.0, fetch_rules=NO_TOTAL)
    start = trio.current_time()
    resolved = await store.resolve(spec(url, sha(SCRIPT)))
    assert resolved.path is not None and resolved.path.read_bytes() == SCRIPT
    assert server.hits["/agent.sh"] == 4
    # Back-off 1 + 2 + 4 s (±20 % jitter), on the mock clock.
    assert 7 * 0.8 <= trio.current_time() - start <= 7 * 1.2 + 1


async def test_retry_after_is_honoured(
    server: ArtifactServer, data_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    url = server.serve("/agent.sh", SCRIPT, failures=[429], failure_headers={"retry-after": "20"})
    store = ArtifactStore(data_dir, retries=1, backoff_base=0.1, backoff_max=30.0, fetch_rules=NO_TOTAL)
    start = trio.current_time()
    await store.resolve(spec(url, sha(SCRIPT)))
    assert 20 * 0.8 <= trio.current_time() - start <= 20 * 1.2 + 1
    assert server.hits["/agent.sh"] == 2


async def test_503_until_retries_run_out_is_unavailable(
    server: ArtifactServer, data_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    url = server.serve("/agent.sh", SCRIPT, failures=[503] * 10)
    store = ArtifactStore(data_dir, retries=2, fetch_rules=NO_TOTAL)
    with pytest.raises(SpearError) as info:
        await store.resolve(spec(url, sha(SCRIPT)))
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert "503" in info.value.message and "3 attempts" in info.value.message and url in info.value.message
    assert server.hits["/agent.sh"] == 3


async def test_connection_refused_is_retried_then_unavailable(
    data_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with socket.socket() as probe:  # a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/agent.sh"
    with pytest.raises(SpearError) as info:
        await ArtifactStore(data_dir, retries=2, fetch_rules=NO_TOTAL).resolve(spec(url, sha(SCRIPT)))
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert url in info.value.message and "ConnectError" in info.value.message
    assert info.value.details["attempts"] == 3


async def test_truncated_body_is_retried(server: ArtifactServer, make_store: StoreFactory) -> None:
    url = server.serve("/agent.sh", SCRIPT, claim_length=len(SCRIPT) + 100)
    with pytest.raises(SpearError) as info:
        await make_store(retries=1).resolve(spec(url, sha(SCRIPT)))
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert server.hits["/agent.sh"] == 2


@pytest.mark.parametrize("content_length", [True, False])
async def test_download_size_cap(
    server: ArtifactServer, make_store: StoreFactory, data_dir: Path, content_length: bool
) -> None:
    body = b"x" * 10_000
    url = server.serve("/big.bin", body, content_length=content_length)
    with pytest.raises(SpearError) as info:
        await make_store(max_download_bytes=4096).resolve(spec(url, sha(body)))
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "4096" in info.value.message and url in info.value.message
    assert server.hits["/big.bin"] == 1  # not retried
    assert cached_files(data_dir) == []


async def test_close_delimited_body_within_cap(server: ArtifactServer, make_store: StoreFactory) -> None:
    url = server.serve("/agent.sh", SCRIPT, content_length=False)
    resolved = await make_store().resolve(spec(url, sha(SCRIPT)))
    assert resolved.path is not None and resolved.path.read_bytes() == SCRIPT


async def test_remote_archive_is_unpacked(server: ArtifactServer, make_store: StoreFactory) -> None:
    archive = tar_gz(tar_file("bin/run", SCRIPT, 0o755), tar_file("lib/data.txt", b"data"))
    url = server.serve("/app-1.0.tar.gz", archive)
    resolved = await make_store().resolve(spec(url, sha(archive)))
    assert resolved.path is not None and resolved.path.is_dir()
    assert resolved.digest == sha(archive)
    assert (resolved.path / "bin" / "run").read_bytes() == SCRIPT
    assert os.access(resolved.path / "bin" / "run", os.X_OK)
    assert not os.access(resolved.path / "lib" / "data.txt", os.X_OK)


async def test_remote_wasm_is_sniffed(server: ArtifactServer, make_store: StoreFactory, data_dir: Path) -> None:
    page = b"<html>Service temporarily moved</html>"
    bad = server.serve("/mod.wasm", page)
    good = server.serve("/ok.wasm", WASM_MODULE)
    store = make_store()
    with pytest.raises(SpearError, match="neither a binary module") as info:
        await store.resolve(spec(bad, sha(page), artifact_type="wasm"))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert cached_files(data_dir) == []
    resolved = await store.resolve(spec(good, sha(WASM_MODULE), artifact_type="wasm"))
    assert resolved.path is not None and resolved.path.read_bytes() == WASM_MODULE
    assert not os.access(resolved.path, os.X_OK)


async def test_same_bytes_under_two_names_share_one_entry(server: ArtifactServer, make_store: StoreFactory) -> None:
    first = server.serve("/a/agent.py", SCRIPT)
    second = server.serve("/b/other.py", SCRIPT)
    store = make_store()
    one = await store.resolve(spec(first, sha(SCRIPT)))
    two = await store.resolve(spec(second, sha(SCRIPT)))
    assert one.path is not None and two.path is not None
    assert (one.path.name, two.path.name) == ("agent.py", "other.py")
    assert one.path.parent == two.path.parent and two.path.read_bytes() == SCRIPT
    assert server.hits["/b/other.py"] == 0  # content-addressed: no second download
    assert (await store.stats())["entries"] == 1
    # The alias survives a restart too.
    assert await make_store().resolve(spec(second, sha(SCRIPT))) == two


async def test_credentials_are_redacted_from_errors(server: ArtifactServer, make_store: StoreFactory) -> None:
    url = f"http://user:hunter2@127.0.0.1:{server.port}/nope.sh?token=s3cr3t"
    with pytest.raises(SpearError) as info:
        await make_store().resolve(spec(url, sha(SCRIPT)))
    assert info.value.code is ErrorCode.NOT_FOUND
    assert "hunter2" not in info.value.message and "s3cr3t" not in info.value.message
    assert "user:***@" in info.value.message and "token=***" in info.value.message


async def test_cancelled_download_hands_over_to_a_waiter(
    server: ArtifactServer, make_store: StoreFactory, data_dir: Path
) -> None:
    body = bytes(range(256)) * 1000
    url = server.serve("/big.bin", body, stall_after=100_000)
    store = make_store()
    results = []
    leader_scope = trio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await store.resolve(spec(url, sha(body)))

    async def waiter() -> None:
        results.append(await store.resolve(spec(url, sha(body))))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        while server.hits["/big.bin"] == 0:
            await trio.sleep(0.001)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        leader_scope.cancel()  # mid-body: the waiter must not inherit this cancellation
        while server.hits["/big.bin"] < 2:
            await trio.sleep(0.001)
        server.release.set()
    assert leader_scope.cancelled_caught
    assert results[0].path is not None and results[0].path.read_bytes() == body
    assert list((data_dir / "artifacts" / "tmp").iterdir()) == []  # the abandoned build is gone


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key), made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_server(nursery: trio.Nursery, tls_files: tuple[Path, Path]) -> ArtifactServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    running = ArtifactServer(tls=context)
    await nursery.start(running.run)
    return running


async def test_https_with_a_private_ca(
    tls_server: ArtifactServer, tls_files: tuple[Path, Path], make_store: StoreFactory
) -> None:
    url = tls_server.serve("/agent.sh", SCRIPT)
    trusted = ssl.create_default_context(cafile=str(tls_files[0]))
    resolved = await make_store(ssl_context=trusted).resolve(spec(url, sha(SCRIPT)))
    assert resolved.path is not None and resolved.path.read_bytes() == SCRIPT


async def test_untrusted_certificate_fails_fast(tls_server: ArtifactServer, make_store: StoreFactory) -> None:
    url = tls_server.serve("/agent.sh", SCRIPT)
    with pytest.raises(SpearError, match="TLS verification failed") as info:
        await make_store(retries=3).resolve(spec(url, sha(SCRIPT)))
    assert info.value.code is ErrorCode.UNAVAILABLE and url in info.value.message
    assert tls_server.connections == 1  # not retried: the certificate will not change
