"""The routing fields a forwarding node reads agree with the owner's full parse."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from spear_actors import SpearError
from spear_actors.cluster.invoke_fields import parse_invoke, routing_fields
from spear_actors.errors import ErrorCode
from spear_actors.model import InvocationType

_ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.lists(st.text(max_size=4), max_size=2),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
)
_PLAIN = {
    "invocation_type": st.sampled_from(
        ["NEW_TASK", "EXISTING_TASK", "new_task", "existing_task", "INVOCATION_TYPE_EXISTING_TASK", "SOMETIMES", ""]
    ),
    "task_name": st.sampled_from(["", "calc", "a b", "é", "x" * 300]),
    "task_id": st.sampled_from(["", "node-a:task-0123", "mine"]),
    "function_name": st.sampled_from(["", "add", "count"]),
    "parameters": _ODD_VALUES,
    "execution_mode": st.sampled_from(["SYNC", "ASYNC", "STREAM", "SOMETIMES"]),
    "create_if_not_exists": st.booleans(),
}


@st.composite
def _params(draw: st.DrawFn) -> Any:
    """Mostly maps of the request's fields, each absent, of a plain value, or of an
    odd type; sometimes not a map at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_ODD_VALUES)
    params: dict[str, Any] = {}
    for key, plain in _PLAIN.items():
        choice = draw(st.integers(0, 5))
        if choice == 1:
            params[key] = draw(_ODD_VALUES)
        elif choice > 1:
            params[key] = draw(plain)
    return params


def _full(params: Any) -> tuple[bool, str] | SpearError:
    try:
        request = parse_invoke(params)
    except SpearError as exc:
        return exc
    existing = request.invocation_type is InvocationType.EXISTING_TASK
    return existing, request.task_id if existing else request.task_name


@given(_params())
def test_routing_fields_agree_with_the_full_parse(params: Any) -> None:
    routed = routing_fields(params)
    full = _full(params)
    if isinstance(full, SpearError):
        assert full.code is ErrorCode.INVALID_ARGUMENT
    if routed is None:
        return  # the router parses in full: the owner's rules, and its error, apply
    # what the forwarding node routes on is what the full parse makes of the same fields
    read = ("invocation_type", "function_name", "task_id" if routed[0] else "task_name")
    assert _full({key: params[key] for key in read if key in params}) == routed
    if not isinstance(full, SpearError):
        assert full == routed
