"""The dict round trip every settings dataclass shares (specs, configs, switches).

Settings travel as JSON and YAML (recipes, bundles, KFP parameters, MLflow params);
each class turns into a dict and back the same way, and a misspelt key is refused by
name rather than ignored.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any, TypeVar

T = TypeVar("T", bound="Settings")


class Settings:
    """Mixin for frozen dataclasses: ``to_dict``, ``from_dict`` (unknown keys are a
    ValueError naming them) and ``with_`` (a copy with some fields changed)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**data)

    def with_(self: T, **changes: Any) -> T:
        return replace(self, **changes)  # type: ignore[type-var]
