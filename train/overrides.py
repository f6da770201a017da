"""The one `--set key=value` parser: command-line strings to typed fields of a frozen config dataclass.

Both configs use it, the CNN's `train.config.Config` and the LLM's `train.llm.presets.LLMConfig`: each says which
keys it knows (and with which message an unknown one is refused); the splitting, the parsing of a value by its
field's declared type and the type check of a value given already typed happen here, once.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["parse_assignments", "parse_typed", "type_name", "example", "matches_type", "typed_changes"]

NONE_WORDS = ("none", "null", "")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_assignments(items: Iterable[str], *, error: type[Exception], check_key: Callable[[str], None],
                      hint: str) -> dict[str, str]:
    """Split `key=value` strings into a dict (values stay strings), in the given order.

    Args:
        items: strings such as "epochs=5" (a leading "--" and dashes in the key are accepted: `--max-steps=3`).
        error: the config's error type.
        check_key: raises `error` for a key the config does not know.
        hint: an example for the message of an item without "=" (e.g. "epochs=5").

    Raises:
        error: an item without "=", an unknown key, or a key set twice (naming both values: no silent "last one
            wins").
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().lstrip("-").replace("-", "_"), value.strip()
        if not sep or not key:
            raise error(f"override {item!r} is not of the form key=value (e.g. {hint})")
        check_key(key)
        if key in out:
            raise error(f"config field {key!r} is set twice ({key}={out[key]} and {key}={value}); set it once")
        out[key] = value
    return out


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def type_name(tp: Any) -> str:
    """A short human name for a field type, e.g. 'int or None', 'tuple of float (comma-separated)'."""
    args = typing.get_args(tp)
    if _is_union(tp):
        return " or ".join("None" if a is type(None) else type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"tuple of {type_name(args[0])} (comma-separated)"
    return getattr(tp, "__name__", str(tp))


def example(tp: Any) -> str:
    """An example literal for a field type, used in error messages."""
    args = typing.get_args(tp)
    if _is_union(tp):
        return example([a for a in args if a is not type(None)][0])
    if typing.get_origin(tp) is tuple:
        return {int: "1,2,3", float: "0.4,0.8"}.get(args[0], "a,b")
    return {int: "10", float: "0.1", bool: "true", str: "name"}.get(tp, "value")


def _parse_scalar(text: str, tp: type) -> Any:
    """One string as an int, float, bool or str; ValueError when it is not one."""
    if tp is bool:
        low = text.strip().lower()
        if low in TRUE_WORDS or low in FALSE_WORDS:
            return low in TRUE_WORDS
        raise ValueError(text)
    if tp is int:
        return int(text.strip())  # "1.5" and "1e3" are refused: an int field takes an integer
    if tp is float:
        value = float(text.strip())
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    return text


def parse_typed(text: str, tp: Any) -> Any:
    """A command-line string as the (possibly optional, union or tuple) type `tp`; ValueError when it is not one.

    "none", "null" or "" give None for an optional field; tuples are comma-separated ("" or "()" is empty).
    """
    args = typing.get_args(tp)
    if _is_union(tp):
        if type(None) in args and text.strip().lower() in NONE_WORDS:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp_inner in inner[:-1]:  # e.g. int | str: "1000" is an int, "all" a str
            try:
                return parse_typed(text, tp_inner)
            except ValueError:
                pass
        return parse_typed(text, inner[-1])
    if typing.get_origin(tp) is tuple:
        body = text.strip().strip("()[]")
        return tuple(_parse_scalar(p, args[0]) for p in body.split(",") if p.strip())
    return _parse_scalar(text, tp)


def matches_type(value: Any, tp: Any) -> bool:
    """Whether a Python value is an instance of a field type (bool is not an int here)."""
    args = typing.get_args(tp)
    if tp is Any:
        return True
    if _is_union(tp):
        return any(matches_type(value, a) for a in args)
    if tp is type(None):
        return value is None
    if typing.get_origin(tp) is tuple:
        return isinstance(value, tuple) and all(matches_type(v, args[0]) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def typed_changes(overrides: Mapping[str, Any], hints: Mapping[str, Any], *, error: type[Exception]) -> dict[str, Any]:
    """Field values from overrides: strings parsed by the field's type, typed values checked against it.

    Args:
        overrides: field -> value (a string from the command line, or a typed Python value); every key known.
        hints: each field's declared type (`typing.get_type_hints` of the config).
        error: the config's error type.

    Returns:
        field -> value of the field's type (lists become tuples, an int given to a float field a float).

    Raises:
        error: a value that does not parse as, or is not of, the field's type (naming the field, the type and an
            example).
    """
    changes = {}
    for name, value in overrides.items():
        tp = hints[name]
        if isinstance(value, str) and tp is not str:
            try:
                value = parse_typed(value, tp)
            except ValueError:
                raise error(f"config field {name!r} expects {type_name(tp)}, got {value!r}; "
                            f"e.g. {name}={example(tp)}") from None
        elif isinstance(value, list):
            value = tuple(value)
        if isinstance(value, int) and not isinstance(value, bool) and tp in (float, float | None):
            value = float(value)
        if not matches_type(value, tp):
            raise error(f"config field {name!r} expects {type_name(tp)}, got {value!r} ({type(value).__name__})")
        changes[name] = value
    return changes
