"""Any params a client can send are either accepted (every declared param present,
within its limits) or refused INVALID_ARGUMENT naming the method; never another
exception."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from spear_actors import ErrorCode, SpearError
from spear_actors.api import METHODS, validate_params

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
_NAMES = st.sampled_from(sorted({p.name for m in METHODS for p in m.params or ()} | {"x", ""}))
_PARAMS = st.one_of(_VALUES, st.dictionaries(_NAMES, _VALUES, max_size=6))
_TABLED = [m for m in METHODS if m.params is not None]


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from(_TABLED), params=_PARAMS)
def test_params_are_accepted_within_limits_or_refused_by_name(method: object, params: object) -> None:
    from spear_actors.api import Method

    assert isinstance(method, Method)
    try:
        args = validate_params(method, params)
    except SpearError as exc:
        assert exc.code is ErrorCode.INVALID_ARGUMENT
        assert exc.message.startswith(f"{method.name}: ")
        return
    assert set(args) == {p.py_name for p in method.params or ()}
    for param in method.params or ():
        value = args[param.py_name]
        if value is None:
            continue
        if param.scale != 1.0:
            value = value * param.scale
        assert isinstance(value, param.kind) or (param.scale != 1.0 and isinstance(value, float))
        if isinstance(value, float):
            assert math.isfinite(value)
        size = len(value) if isinstance(value, (str, list)) else value
        if param.minimum is not None and not isinstance(size, bool):
            assert size >= param.minimum
        if param.maximum is not None and not isinstance(size, bool):
            assert size <= param.maximum
