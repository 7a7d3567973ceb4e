"""The [policy] table: every value checked and named; numbers finite and in range
(issue 12 item 9); the example config keeps `make run` working."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from spear_actors import ErrorCode, SpearError
from spear_actors.config import NodeConfig
from spear_actors.model import InstancePolicy
from spear_actors.policy import OperatorPolicy

from ..conftest import ROOT


def test_policy_table_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    config = NodeConfig.from_dict(
        {
            "policy": {
                "artifact_roots": ["agents", "/srv/x"],
                "client_commands": True,
                "allowed_commands": ["python3"],
                "fetch_timeout_s": 30,
                "wasm_max_fuel": 10**9,
                "agent_env": ["PATH", "LANG"],
            }
        },
        base=tmp_path,
    )
    assert config.policy.artifact_roots == [tmp_path / "agents", Path("/srv/x")]
    assert config.policy.fetch_timeout_s == 30.0 and config.policy.allowed_commands == ["python3"]


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"fetch_timeout_s": math.nan}, "fetch_timeout_s"),
        ({"fetch_timeout_s": -1}, "fetch_timeout_s"),
        ({"wasm_max_timeout_s": math.inf}, "wasm_max_timeout_s"),
        ({"wasm_max_fuel": 2**64}, "wasm_max_fuel"),
        ({"wasm_max_memory_bytes": 0}, "wasm_max_memory_bytes"),
        ({"agent_max_open_files": -5}, "agent_max_open_files"),
        ({"agent_max_cpu_s": 1.5}, "agent_max_cpu_s"),
        ({"runtimes": ["process", "jvm"]}, "runtimes"),
        ({"sources": "http"}, "sources"),
        ({"agent_env": ["PATH", "LD_PRELOAD"]}, "agent_env"),
        ({"client_commands": "yes"}, "client_commands"),
        ({"surprise": 1}, "surprise"),
        ({"external_secret_ttl_s": 0}, "external_secret_ttl_s"),
        ({"external_secret_ttl_s": 7200}, "external_secret_ttl_s"),  # above the (default) maximum
        ({"external_secret_max_ttl_s": math.inf}, "external_secret_max_ttl_s"),
        ({"external_max_secrets_per_task": 0}, "external_max_secrets_per_task"),
        ({"external_max_secrets_per_task": 2.5}, "external_max_secrets_per_task"),
    ],
)
def test_bad_policy_values_are_refused_by_name(table: dict[str, object], named: str) -> None:
    with pytest.raises(SpearError) as info:
        NodeConfig.from_dict({"policy": table})
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and f"policy.{named}" in info.value.message


@pytest.mark.parametrize(
    ("key", "value"),
    [("shutdown_grace_s", math.nan), ("stop_grace_s", -1.0), ("wasm_workers", 0), ("start_timeout_s", math.inf)],
)
def test_bad_node_numbers_are_refused_by_name(key: str, value: float) -> None:
    with pytest.raises(SpearError) as info:
        NodeConfig.from_dict({key: value})
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and key in info.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("idle_timeout_s", math.nan),
        ("idle_timeout_s", -1.0),
        ("idle_timeout_s", math.inf),
        ("max_instances", 10**12),
        ("max_pending", -1),
        ("max_concurrency", 0),
    ],
)
def test_instance_policy_numbers_must_be_finite_and_in_range(field: str, value: float) -> None:
    with pytest.raises(SpearError) as info:
        InstancePolicy.from_dict({field: value})
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and field in info.value.message


def test_the_example_config_lists_the_roots_make_run_needs() -> None:
    config = NodeConfig.from_file(ROOT / "examples" / "node.toml")
    policy = config.policy.resolved(config.listen)
    assert policy.artifact_roots is not None and ROOT / "examples" in policy.artifact_roots
    policy.admit(config.tasks[0].artifact)  # the declared task would pass even as a client's
    assert OperatorPolicy().validate() is None


def test_external_mode_is_the_operators_to_allow() -> None:
    assert "external" not in OperatorPolicy().runtimes  # clients may not create external tasks by default
    config = NodeConfig.from_dict(
        {
            "agent_advertise": "ws://agents.example:7600",
            "policy": {
                "runtimes": ["process", "external"],
                "external_secret_max_ttl_s": 7200,
                "external_secret_ttl_s": 60,
            },
        }
    )
    assert config.agent_advertise == "ws://agents.example:7600"
    limits = config.policy.secret_limits()
    assert (limits.default_ttl_s, limits.max_ttl_s, limits.max_per_task) == (60.0, 7200.0, 8)
