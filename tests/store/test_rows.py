"""What a record holds comes back from disk as it went in, whatever an agent returned."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spear_actors.store import ExecutionRow, Retention, SqliteStore, pack

# The values a msgpack peer can send: nested lists and maps (str or int keys), bytes,
# 64-bit integers signed and unsigned, floats, None, booleans.
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(-100, 100), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(result=VALUES, logs=st.lists(st.text(max_size=30), max_size=5), details=VALUES)
def test_a_record_comes_back_from_disk_as_it_went_in(result: Any, logs: list[str], details: Any) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as directory:
            store = SqliteStore(Path(directory), Retention())
            await store.open("node-x", 10)
            try:
                now = time.time()
                error = {"code": "FUNCTION_ERROR", "message": "boom", "details": {"value": details}}
                row = ExecutionRow(
                    "exec-1", "task-1", "f", "ASYNC", "FAILED", "inst", now, now, now, 1.5,
                    pack(error), pack(result), None, pack(logs),
                )  # fmt: skip
                await store.committed(store.save(row, urgent=True))
                loaded = await store.load("exec-1")
                assert loaded is not None
                answer = loaded.to_dict(include_result=True, include_logs=True)
                assert answer["result"] == result
                assert answer["logs"] == logs
                assert answer["error"] == error
                recorded = loaded.error_value()
                assert recorded is not None and recorded.details == {"value": details}
            finally:
                await store.aclose()

    trio.run(main)
