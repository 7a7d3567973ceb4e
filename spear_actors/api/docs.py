"""docs/protocol.md's method list, rendered from the table (a test keeps the file in step)."""

from __future__ import annotations

from .spec import Method
from .table import METHODS

__all__ = ["method_list_markdown"]


def method_list_markdown(methods: tuple[Method, ...] = METHODS) -> str:
    """The markdown table of every method: kind, params (type, default, limits), result."""
    lines = ["| method | kind | params | result |", "| --- | --- | --- | --- |"]
    for method in methods:
        names = ", ".join(f"`{name}`" for name in (method.name, *method.aliases))
        kind = "**stream**" if method.stream else "unary"
        if method.params is None:
            params = "InvokeFunctionRequest"
        elif not method.params:
            params = "none"
        else:
            params = "; ".join(_param(p) for p in method.params)
        lines.append(f"| {names} | {kind} | {params} | {method.result} |")
    return "\n".join(lines) + "\n"


def _param(param: object) -> str:
    from .spec import Param

    assert isinstance(param, Param)
    default = "required" if param.required else f"default `{_value(param.default)}`"
    limits = param.limits_text()
    return f"`{param.name}` {param.type_text()}, {default}" + (f", {limits}" if limits else "")


def _value(value: object) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
