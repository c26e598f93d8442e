"""Settings declared once: the dict round trip every settings dataclass shares, and
command-line flags made from the same fields.

Settings travel as JSON and YAML (recipes, bundles, KFP parameters, MLflow params);
each class turns into a dict and back the same way, and a misspelt key is refused by
name rather than ignored. A field declared with :func:`option` carries its help text,
and :func:`add_arguments` makes its flag, so a step's request is written once for the
CLI, the pipeline and the files (as HfArgumentParser does for the transformers examples).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, field, fields, replace
from typing import Any, Sequence, TypeVar, get_args, get_type_hints

T = TypeVar("T", bound="Settings")


class Settings:
    """Mixin for frozen dataclasses: ``to_dict``, ``from_dict`` (unknown keys are a
    ValueError naming them) and ``with_`` (a copy with some fields changed)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        """An instance from a dict (JSON, YAML, handler config): unknown keys are refused
        by name, and numbers written as text (a YAML "30", a KFP string parameter) become
        the int or float their field declares."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}; known: {sorted(known)}")
        hints = get_type_hints(cls)
        for name, value in data.items():
            kind = _number_type(hints[name])
            if kind is not None and value is not None and not isinstance(value, bool):
                try:
                    data[name] = kind(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{cls.__name__}.{name}: expected {kind.__name__}, got {value!r}") from None
        return cls(**data)

    def with_(self: T, **changes: Any) -> T:
        return replace(self, **changes)  # type: ignore[type-var]


def option(default: Any = MISSING, help: str = "", **cli: Any) -> Any:
    """A dataclass field declared once with its help text: :func:`add_arguments` turns it
    into a command-line flag, ``to_dict`` into JSON/YAML. ``cli`` holds argparse extras
    (``choices``, ``metavar``, ``flag``); ``cli=False`` keeps a field off the command line."""
    return field(default=default, metadata={"help": help, "cli": cli.pop("cli", True), **cli})


def _number_type(hint: Any) -> type | None:
    """int or float when a field holds one number (``int``, ``float | None``), else None."""
    if hint in (int, float):
        return hint
    args = get_args(hint)
    if type(None) in args and len(args) == 2:
        other = args[0] if args[1] is type(None) else args[1]
        return other if other in (int, float) else None
    return None


def _flag_type(hint: Any) -> Any:
    """The argparse ``type`` of a field's annotation (``X | None`` -> X)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of ``cls`` that has help text (``--field-name``; booleans
    ``store_true``), with the field's default, type and help (HfArgumentParser's idea)."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        meta = dict(f.metadata)
        if not meta.get("help") or not meta.pop("cli", True) or f.name in skip:
            continue
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": f.name, **meta}
        kind = _flag_type(hints[f.name])
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.setdefault("type", kind)  # a field whose text is parsed by the class itself says type=str
            if f.default is MISSING:
                kwargs["required"] = True
            else:  # a repeatable flag starts from None (argparse appends to a list it makes); the class takes None as empty
                kwargs["default"] = None if kwargs.get("action") == "append" else f.default
        parser.add_argument(flag, **kwargs)


def from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """An instance of ``cls`` from parsed flags (fields the parser has) and ``values``."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    return cls(**{**given, **values})
