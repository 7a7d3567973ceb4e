"""The etcd v3 gateway client against a real etcd."""

from __future__ import annotations

import functools

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.cluster.etcd import Compare, EtcdClient, Op, PutResult, RangeResult

from .etcd_server import EtcdServer, free_port


async def test_put_get_range_delete(etcd: EtcdServer, prefix: str) -> None:
    async with EtcdClient([etcd.url]) as client:
        put = await client.put(prefix + "a", b"1")
        await client.put(prefix + "b", b"\x00\xff binary")
        await client.put(prefix + "c/d", b"3")
        assert client.api_prefix == "/v3"  # etcd 3.4 serves the stable gateway path
        got = await client.get(prefix + "a")
        assert got is not None and got.value == b"1" and got.create_revision == put.revision
        assert await client.get(prefix + "missing") is None

        listing = await client.range(prefix, prefix=True)
        assert [kv.key for kv in listing.kvs] == [(prefix + k).encode() for k in ("a", "b", "c/d")]
        assert listing.kvs[1].value == b"\x00\xff binary" and listing.count == 3 and not listing.more
        limited = await client.range(prefix, prefix=True, limit=2)
        assert len(limited.kvs) == 2 and limited.count == 3 and limited.more
        counted = await client.range(prefix, prefix=True, count_only=True)
        assert counted.count == 3 and counted.kvs == []

        second = await client.put(prefix + "a", b"2", prev_kv=True)
        assert second.prev_kv is not None and second.prev_kv.value == b"1"
        old = await client.range(prefix + "a", revision=put.revision)
        assert old.kvs[0].value == b"1"  # reads at an older revision

        deleted = await client.delete(prefix, prefix=True, prev_kv=True)
        assert deleted.deleted == 3 and len(deleted.prev_kvs) == 3
        assert (await client.range(prefix, prefix=True)).kvs == []


async def test_txn_create_if_absent_runs_one_branch(etcd: EtcdServer, prefix: str) -> None:
    key = prefix + "claim"
    async with EtcdClient([etcd.url]) as client:
        first = await client.txn([Compare.create_revision(key, "EQUAL", 0)], [Op.put(key, b"me")], [Op.get(key)])
        assert first.succeeded and isinstance(first.responses[0], PutResult)
        second = await client.txn([Compare.create_revision(key, "EQUAL", 0)], [Op.put(key, b"you")], [Op.get(key)])
        assert not second.succeeded
        answer = second.responses[0]
        assert isinstance(answer, RangeResult) and answer.kvs[0].value == b"me"
        by_value = await client.txn([Compare.value(key, "EQUAL", b"me")], [Op.delete(key, prev_kv=True)])
        assert by_value.succeeded and await client.get(key) is None


async def test_lease_binds_keys_and_revoke_deletes_them(etcd: EtcdServer, prefix: str) -> None:
    async with EtcdClient([etcd.url]) as client:
        lease = await client.lease_grant(5)
        assert lease.id and lease.ttl == 5
        await client.put(prefix + "bound", b"x", lease=lease.id)
        kv = await client.get(prefix + "bound")
        assert kv is not None and kv.lease == lease.id
        lease_txn = await client.txn([Compare.lease(prefix + "bound", "EQUAL", lease.id)], [Op.get(prefix + "bound")])
        assert lease_txn.succeeded
        assert await client.lease_keepalive(lease.id) == 5
        assert 0 < await client.lease_time_to_live(lease.id) <= 5
        await client.lease_revoke(lease.id)
        assert await client.get(prefix + "bound") is None
        assert await client.lease_time_to_live(lease.id) == -1
        with pytest.raises(SpearError) as gone:
            await client.lease_keepalive(lease.id)
        assert gone.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(SpearError) as revoked:
            await client.lease_revoke(lease.id)
        assert revoked.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(SpearError) as dead_lease:
            await client.put(prefix + "late", b"x", lease=lease.id)
        assert dead_lease.value.code is ErrorCode.NOT_FOUND


async def test_watch_sees_puts_and_deletes_in_order(etcd: EtcdServer, prefix: str) -> None:
    async with EtcdClient([etcd.url]) as client:
        async with client.watch(prefix, prefix=True, prev_kv=True) as stream:
            await client.put(prefix + "w", b"1")
            await client.put(prefix + "w", b"2")
            await client.put(prefix + "other-prefix-sibling", b"3")
            await client.delete(prefix + "w")
            await client.put(prefix.rstrip("/") + "X", b"outside")  # not under the prefix
            seen = []
            with trio.fail_after(10):
                async for response in stream:
                    seen.extend(response.events)
                    if len(seen) >= 4:
                        break
        assert [(e.type, e.kv.key, e.kv.value) for e in seen] == [
            ("PUT", (prefix + "w").encode(), b"1"),
            ("PUT", (prefix + "w").encode(), b"2"),
            ("PUT", (prefix + "other-prefix-sibling").encode(), b"3"),
            ("DELETE", (prefix + "w").encode(), b""),
        ]
        assert seen[1].prev_kv is not None and seen[1].prev_kv.value == b"1"
        assert seen[3].prev_kv is not None and seen[3].prev_kv.value == b"2"


async def test_watch_replays_from_a_revision(etcd: EtcdServer, prefix: str) -> None:
    async with EtcdClient([etcd.url]) as client:
        first = await client.put(prefix + "r", b"1")
        await client.put(prefix + "r", b"2")
        async with client.watch(prefix + "r", start_revision=first.revision) as stream:
            with trio.fail_after(10):
                response = await stream.__anext__()
        assert [e.kv.value for e in response.events] == [b"1", b"2"]


async def test_watch_of_a_compacted_revision_is_failed_precondition(etcd: EtcdServer, prefix: str) -> None:
    async with EtcdClient([etcd.url]) as client:
        first = await client.put(prefix + "old", b"1")
        latest = await client.put(prefix + "old", b"2")
        await client.call("/kv/compaction", {"revision": str(latest.revision)})
        with pytest.raises(SpearError) as compacted, trio.fail_after(10):
            async with client.watch(prefix + "old", start_revision=first.revision) as stream:
                async for _ in stream:
                    pass
        assert compacted.value.code is ErrorCode.FAILED_PRECONDITION
        assert compacted.value.details["compact_revision"] == latest.revision


async def test_etcd_errors_map_to_codes(etcd: EtcdServer) -> None:
    async with EtcdClient([etcd.url]) as client:
        with pytest.raises(SpearError) as empty_key:
            await client.put("", b"x")
        assert empty_key.value.code is ErrorCode.INVALID_ARGUMENT
        assert empty_key.value.details["etcd_code"] == 3
        with pytest.raises(SpearError) as no_lease:
            await client.lease_keepalive(0x1234)
        assert no_lease.value.code is ErrorCode.NOT_FOUND


async def test_unreachable_etcd_is_unavailable() -> None:
    async with EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout_s=5) as client:
        with pytest.raises(SpearError) as refused:
            await client.get("k")
        assert refused.value.code is ErrorCode.UNAVAILABLE
        with pytest.raises(SpearError) as watch_refused:
            async with client.watch("k"):
                pass
        assert watch_refused.value.code is ErrorCode.UNAVAILABLE


async def test_silent_server_is_unavailable_within_the_timeout(nursery: trio.Nursery) -> None:
    # A real socket that accepts connections and never answers: every call must end.
    listeners = await nursery.start(functools.partial(trio.serve_tcp, _hold_forever, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with EtcdClient([f"http://127.0.0.1:{port}"], timeout_s=0.3) as client:
        with trio.fail_after(10):
            with pytest.raises(SpearError) as silent_get:
                await client.get("k")
            assert silent_get.value.code is ErrorCode.UNAVAILABLE
            with pytest.raises(SpearError) as silent_grant:
                await client.lease_grant(5)
            assert silent_grant.value.code is ErrorCode.UNAVAILABLE
            with pytest.raises(SpearError) as watch_silent:
                async with client.watch("k"):
                    pass
            assert watch_silent.value.code is ErrorCode.UNAVAILABLE


async def _hold_forever(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


async def test_failover_to_the_next_endpoint(etcd: EtcdServer, prefix: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient([dead, etcd.url]) as client:
        await client.put(prefix + "f", b"1")
        assert (await client.get(prefix + "f")) is not None


async def test_answers_past_the_byte_limit_are_refused(etcd: EtcdServer, prefix: str) -> None:
    async with EtcdClient([etcd.url]) as writer:
        big = await writer.put(prefix + "big", b"x" * 200_000)
    async with EtcdClient([etcd.url], max_response_bytes=100_000, max_watch_message_bytes=100_000) as client:
        with pytest.raises(SpearError) as too_big:
            await client.get(prefix + "big")
        assert too_big.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert (await client.range(prefix + "big", count_only=True)).count == 1
        with pytest.raises(SpearError) as watch_too_big, trio.fail_after(10):
            async with client.watch(prefix + "big", start_revision=big.revision) as stream:
                async for _ in stream:
                    pass
        assert watch_too_big.value.code is ErrorCode.RESOURCE_EXHAUSTED


def test_bad_endpoints_are_invalid_argument() -> None:
    for endpoints in ([], ["127.0.0.1:2379"], ["unix:///tmp/x"]):
        with pytest.raises(SpearError) as bad:
            EtcdClient(endpoints)
        assert bad.value.code is ErrorCode.INVALID_ARGUMENT


async def test_compare_and_op_json_is_what_the_gateway_takes(etcd: EtcdServer, prefix: str) -> None:
    # Every compare target the registry relies on, accepted by the real server.
    key = prefix + "t"
    async with EtcdClient([etcd.url]) as client:
        await client.put(key, b"v")
        kv = await client.get(key)
        assert kv is not None
        result = await client.txn(
            [
                Compare.version(key, "EQUAL", 1),
                Compare.create_revision(key, "EQUAL", kv.create_revision),
                Compare.mod_revision(key, "GREATER", 0),
                Compare.value(key, "NOT_EQUAL", b"w"),
                Compare.lease(key, "EQUAL", 0),
            ],
            [Op.get(key, prefix=True, limit=1)],
        )
        assert result.succeeded
