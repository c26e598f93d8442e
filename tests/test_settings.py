"""ser.settings: every settings class round-trips through a dict and refuses a misspelt key by name."""

from __future__ import annotations

import pytest

from ser.study.headnet import HeadSpec
from ser.study.plus import PlusConfig
from ser.study.plusnet import PlusSpec
from ser.study.training import TrainConfig


CHANGED = {
    HeadSpec: {"hidden": 64, "dropout": 0.1, "pooling": "mean", "window": 150},
    PlusSpec: {"channels": (8, 16, 32, 64), "window": 150, "hop": 50},
    PlusConfig: {"crop": False, "mixup": 0.0, "time_masks": 1},
    TrainConfig: {"epochs": 7, "lr": 3e-4, "schedule": "cosine", "weight_decay": 0.01},
}


@pytest.mark.parametrize("cls", list(CHANGED))
def test_round_trip_unknown_keys_and_copies(cls):
    changed = cls().with_(**CHANGED[cls])
    assert changed != cls() and all(getattr(changed, k) == v for k, v in CHANGED[cls].items())
    assert cls.from_dict(changed.to_dict()) == changed  # nothing lost on the way through a dict
    with pytest.raises(ValueError, match=rf"unknown {cls.__name__} fields: \['dropuot'\]"):
        cls.from_dict({**changed.to_dict(), "dropuot": 0.5})
