"""ser.settings: every settings class round-trips through a dict and refuses a misspelt key by name."""

from __future__ import annotations

import pytest

from ser.headnet import HeadSpec
from ser.plus import PlusConfig
from ser.plusnet import PlusSpec
from ser.training import TrainConfig


@pytest.mark.parametrize("cls", [HeadSpec, PlusSpec, PlusConfig, TrainConfig])
def test_round_trip_unknown_keys_and_copies(cls):
    default = cls()
    assert cls.from_dict(default.to_dict()) == default
    with pytest.raises(ValueError, match=rf"unknown {cls.__name__} fields: \['dropuot'\]"):
        cls.from_dict({**default.to_dict(), "dropuot": 0.5})
    name = next(iter(default.to_dict()))
    assert default.with_(**{name: getattr(default, name)}) == default
