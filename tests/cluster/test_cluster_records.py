"""The pure parts: gateway JSON parsing, key ranges, stored records, ids, config."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear_actors import ErrorCode, SpearError
from spear_actors.cluster import (
    ClusterConfig,
    NodeInfo,
    TaskEntry,
    execution_owner,
    id_owner,
    new_execution_id,
    new_task_id,
    place_task,
)
from spear_actors.cluster.etcd_types import KeyValue, RangeResult, TxnResult, WatchResponse, prefix_range_end
from spear_actors.cluster.ids import NODE_ID_PATTERN
from spear_actors.cluster.records import MAX_RECORD_BYTES, RecordError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
gateway_keys = st.sampled_from(
    ["kvs", "key", "value", "count", "more", "header", "revision", "responses", "response_range", "events",
     "type", "kv", "prev_kv", "succeeded", "created", "canceled", "compact_revision", "lease", "version"]
)  # fmt: skip
gateway_like = st.recursive(
    json_values,
    lambda inner: st.dictionaries(gateway_keys, inner, max_size=6) | st.lists(inner, max_size=3),
    max_leaves=30,
)


@given(st.binary(max_size=20))
def test_prefix_range_end_covers_exactly_the_prefix(prefix: bytes) -> None:
    end = prefix_range_end(prefix)
    if prefix.strip(b"\xff") == b"":
        assert end == b"\0"  # "to the end of the keyspace"
        return
    assert prefix < end
    assert prefix + b"\xff" * 8 < end  # every key under the prefix is below the end
    assert not end.startswith(prefix)  # and the end itself is not under it


@given(gateway_like)
def test_any_gateway_json_parses_or_is_a_protocol_error(raw: object) -> None:
    for parse in (RangeResult.from_json, TxnResult.from_json, WatchResponse.from_json, KeyValue.from_json):
        try:
            parse(raw)
        except SpearError as exc:
            assert exc.code is ErrorCode.PROTOCOL_ERROR


def test_gateway_json_fields_are_decoded() -> None:
    raw = {
        "header": {"revision": "12"},
        "kvs": [{"key": base64.b64encode(b"k").decode(), "value": base64.b64encode(b"v").decode(), "lease": "99"}],
        "count": "1",
    }
    result = RangeResult.from_json(raw)
    assert result.revision == 12 and result.count == 1 and not result.more
    assert result.kvs[0] == KeyValue(b"k", b"v", 0, 0, 0, 99)
    with pytest.raises(SpearError):
        KeyValue.from_json({"key": "not base64!"})


node_ids = st.from_regex(NODE_ID_PATTERN, fullmatch=True)


@given(node_ids, st.lists(st.text(max_size=30), max_size=4), st.integers(0, 10**6), st.integers(0, 10**6))
def test_node_records_round_trip(node_id: str, endpoints: list[str], capacity: int, load: int) -> None:
    node = NodeInfo(node_id, tuple(endpoints), "1.2.3", capacity, load, 1234.5)
    assert NodeInfo.from_json(node.to_json(), lease=7) == NodeInfo(
        node_id, tuple(endpoints), "1.2.3", capacity, load, 1234.5, lease=7
    )


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40), node_ids, st.floats(0, 2e9))
def test_task_entries_round_trip(name: str, task_id: str, owner: str, claimed_at: float) -> None:
    entry = TaskEntry(name, task_id, owner, claimed_at)
    assert TaskEntry.from_json(entry.to_json(), revision=3, lease=4) == TaskEntry(
        name, task_id, owner, claimed_at, 3, 4
    )


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_stored_records_from_other_nodes_are_checked(value: bytes) -> None:
    for parse in (NodeInfo.from_json, TaskEntry.from_json):
        try:
            parsed = parse(value)
        except RecordError:
            continue
        assert isinstance(parsed, NodeInfo | TaskEntry)


def test_records_past_the_size_bound_are_refused() -> None:
    huge = json.dumps({"task_name": "x" * MAX_RECORD_BYTES, "task_id": "i", "owner": "n", "claimed_at": 1}).encode()
    with pytest.raises(RecordError):
        TaskEntry.from_json(huge)
    with pytest.raises(RecordError):
        NodeInfo.from_json(json.dumps({"node_id": "bad:id", "endpoints": [], "version": "", "capacity": 1,
                                       "load": 0, "started_at": 0}).encode())  # fmt: skip


@given(node_ids)
def test_execution_and_task_ids_name_their_owner(node_id: str) -> None:
    execution_id = new_execution_id(node_id)
    assert execution_owner(execution_id) == node_id
    assert execution_id != new_execution_id(node_id)
    task_id = new_task_id(node_id)
    assert id_owner(task_id) == node_id and task_id != new_task_id(node_id)


@given(st.text(max_size=80))
def test_any_execution_id_parses_to_an_owner_or_none(execution_id: str) -> None:
    owner = execution_owner(execution_id)
    assert owner is None or (NODE_ID_PATTERN.fullmatch(owner) and execution_id.startswith(owner + ":"))


def test_ids_without_a_node_have_no_owner() -> None:
    assert execution_owner("exec-0123abcd") is None
    assert execution_owner("node-1:") is None
    assert execution_owner(":exec-1") is None
    with pytest.raises(SpearError) as bad:
        new_execution_id("no:colons")
    assert bad.value.code is ErrorCode.INVALID_ARGUMENT


def test_cluster_config_from_a_table() -> None:
    config = ClusterConfig.from_mapping({"endpoints": "http://127.0.0.1:2379", "lease_ttl_s": 5})
    assert config.endpoints == ["http://127.0.0.1:2379"] and config.prefix == "/spear/"
    assert config.keepalive_interval_s == pytest.approx(5 / 3)
    for bad in (
        {"endpoints": []},
        {"endpoints": "127.0.0.1:2379"},
        {"endpoints": "http://e", "prefix": "spear"},
        {"endpoints": "http://e", "lease_ttl_s": 1},
        {"endpoints": "http://e", "lease_ttl_s": 2.5},
        {"endpoints": "http://e", "etcd_username": "root"},
        {"endpoints": "http://e", "surprise": 1},
        {"endpoints": 7},
    ):
        with pytest.raises(SpearError) as refused:
            ClusterConfig.from_mapping(bad)
        assert refused.value.code is ErrorCode.INVALID_ARGUMENT, bad


loads = st.builds(
    lambda i, capacity, load: NodeInfo(f"n{i}", capacity=capacity, load=load),
    st.integers(0, 20),
    st.integers(0, 8),
    st.integers(0, 10),
)


@given(loads, st.lists(loads, max_size=6))
def test_placement_stays_local_until_full_then_picks_the_least_loaded(local: NodeInfo, others: list[NodeInfo]) -> None:
    chosen = place_task(local, [local, *others])
    if local.load < local.capacity or not any(n.load < n.capacity for n in others):
        assert chosen is local
    else:
        assert chosen.load < chosen.capacity
        assert all(chosen.utilisation <= n.utilisation for n in others if n.load < n.capacity)
