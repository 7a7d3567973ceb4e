"""The vocabulary of the method table: :class:`Param`, :class:`Method` and the one
validator that checks a request's params against a method's declaration."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Final

from ..errors import ErrorCode, SpearError

__all__ = ["REQUIRED", "CliCommand", "Method", "Param", "validate_params"]


class _Required:
    """The default of a param that must be given."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final[Any] = _Required()

_TYPE_NAMES: Final = {str: "str", bool: "bool", int: "int", float: "float", list: "list", dict: "map"}


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    """One named parameter of a method, as it travels on the wire.

    ``minimum``/``maximum`` bound an int or float's value and a str or list's length.
    ``python_name``/``scale`` let the Python faces (node, client) take a friendlier
    form: e.g. the wire's ``timeout_ms`` is ``timeout`` in seconds (``scale`` 1000).
    """

    name: str
    kind: type
    default: Any = REQUIRED
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    item_kind: type | None = None
    """For a list: the type every item must have."""
    python_name: str | None = None
    scale: float = 1.0
    cli: str | None = None
    """The CLI's spelling: ``--flag`` or a positional name; None: not on the CLI."""
    cli_help: str = ""

    @property
    def required(self) -> bool:
        """True when the param has no default."""
        return self.default is REQUIRED

    @property
    def py_name(self) -> str:
        """The name on the Python faces (node and client methods)."""
        return self.python_name or self.name

    def type_text(self) -> str:
        """The type as docs/protocol.md spells it."""
        text = _TYPE_NAMES.get(self.kind, "any")
        if self.item_kind is not None:
            text = f"list of {_TYPE_NAMES.get(self.item_kind, 'any')}"
        return f"{text} or nil" if self.nullable else text

    def limits_text(self) -> str:
        """The bounds as docs/protocol.md spells them ("" when unbounded)."""
        unit = " items" if self.kind is list else " chars" if self.kind is str else ""
        if self.minimum is not None and self.maximum is not None:
            return f"{_number(self.minimum)} to {_number(self.maximum)}{unit}"
        if self.maximum is not None:
            return f"at most {_number(self.maximum)}{unit}"
        if self.minimum is not None:
            return f"≥ {_number(self.minimum)}"
        return ""

    def check(self, method: str, value: Any) -> Any:
        """*value* if it is valid for this param, else INVALID_ARGUMENT naming it."""
        if value is None and (self.nullable or self.default is None):
            return None
        kind_ok = isinstance(value, self.kind) and not (isinstance(value, bool) and self.kind is not bool)
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, kind_ok = float(value), True
        if not kind_ok:
            raise _invalid(method, f"{self.name} must be {self.type_text()}, got {_wire_type(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid(method, f"{self.name} must be finite, got {value!r}")
        size = len(value) if isinstance(value, (str, list)) else value
        if isinstance(size, (int, float)) and not isinstance(size, bool):
            low, high = self.minimum, self.maximum
            if (low is not None and size < low) or (high is not None and size > high):
                what = "length" if isinstance(value, (str, list)) else "value"
                raise _invalid(
                    method, f"{self.name} {what} must be {self.limits_text() or 'in range'}, got {_number(size)}"
                )
        if self.item_kind is not None and isinstance(value, list):
            for index, item in enumerate(value):
                if not isinstance(item, self.item_kind) or (isinstance(item, bool) and self.item_kind is not bool):
                    raise _invalid(
                        method,
                        f"{self.name}[{index}] must be {_TYPE_NAMES.get(self.item_kind, 'any')}, "
                        f"got {_wire_type(item)}",
                    )
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class CliCommand:
    """How a method appears as a ``spear`` subcommand."""

    name: str
    help: str
    examples: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Method:
    """One FunctionService method: what the gateway serves, the client calls, the CLI
    offers and docs/protocol.md lists.

    ``params`` None means the params are an InvokeFunctionRequest map, checked by
    :class:`~spear_actors.model.InvokeRequest`. The node serves the method with its
    attribute ``node_method``: called with the validated params by their Python names
    (a stream method also gets ``sink``, an async callable taking each item).
    """

    name: str
    doc: str
    node_method: str
    params: tuple[Param, ...] | None = ()
    stream: bool = False
    result: str = ""
    aliases: tuple[str, ...] = ()
    refused_while_draining: bool = False
    """True for methods that start work (a draining node answers them UNAVAILABLE)."""
    cli: CliCommand | None = None

    def param(self, name: str) -> Param:
        """The param called *name* (KeyError if none)."""
        for param in self.params or ():
            if param.name == name:
                return param
        raise KeyError(name)


def validate_params(method: Method, params: Any) -> dict[str, Any]:
    """Check wire *params* against *method*; return them by Python name, scaled, with
    defaults filled in. Every defect is INVALID_ARGUMENT naming the param."""
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise _invalid(method.name, f"params must be a map, got {_wire_type(params)}")
    declared = method.params or ()
    known = {param.name for param in declared}
    unknown = [key for key in params if key not in known]
    if unknown:
        shown = sorted(repr(key) for key in unknown)[:10]
        raise _invalid(method.name, f"unknown params [{', '.join(shown)}]")
    out: dict[str, Any] = {}
    for param in declared:
        if param.name in params:
            value = param.check(method.name, params[param.name])
        elif param.required:
            raise _invalid(method.name, f"{param.name} is required")
        else:
            value = param.default
        if value is not None and param.scale != 1.0:
            value = value / param.scale
        out[param.py_name] = value
    return out


def _invalid(method: str, message: str) -> SpearError:
    return SpearError(ErrorCode.INVALID_ARGUMENT, f"{method}: {message}")


def _wire_type(value: object) -> str:
    if value is None:
        return "nil"
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
