"""Node configuration files."""

from __future__ import annotations

from pathlib import Path

import pytest

from spear_actors import ErrorCode, SpearError
from spear_actors.config import NodeConfig

from ..conftest import ROOT


def test_the_example_config_loads_with_absolute_paths() -> None:
    config = NodeConfig.from_file(ROOT / "examples" / "node.toml")
    assert config.listen == ["ws://127.0.0.1:7411"]
    (task,) = config.tasks
    assert task.name == "hello"
    assert Path(task.artifact.location) == ROOT / "examples" / "hello_agent.py"
    assert task.policy.min_instances == 1
    assert config.data_dir.is_absolute()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bogus = 1", "unknown setting 'bogus'"),
        ("default_timeout_ms = 'soon'", "default_timeout_ms must be int"),
        ("[tasks.t]\nartifact = { location = 'a.py' }\npolcy = {}", "unknown keys ['polcy']"),
        ("[tasks.t]\nartifact = {}", "location is required"),
        ("[defaults]\nmax_instances = 0", "max_instances must be >= 1"),
        ("[defaults]\nscheduling = 'random'", "scheduling must be one of"),
        ("this is not toml", "cannot read config"),
        ("token = 5", "token must be str"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(SpearError) as info:
        NodeConfig.from_file(path)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert fragment in info.value.message


def test_json_config(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text('{"listen": "tcp://127.0.0.1:0", "defaults": {"max_concurrency": 8}, "token": "t"}')
    config = NodeConfig.from_file(path)
    assert config.listen == ["tcp://127.0.0.1:0"]
    assert config.defaults.max_concurrency == 8 and config.defaults.max_instances == 4
    assert config.token == "t"
