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


def test_numbers_written_as_text_become_their_fields_type_and_bad_ones_are_named():
    """A YAML recipe or a handler config may carry "30" for a number; one from_dict
    turns it into the field's type for every settings class (FeatureSpec, Limits ...)."""
    from ser.data.features import FeatureSpec
    from ser.serve.serving import Limits

    spec = FeatureSpec.from_dict({"kind": "mel", "size": "30", "sample_rate": None, "top_db": "80"})
    assert spec.size == 30 and spec.sample_rate is None and spec.top_db == 80.0
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    limits = Limits.from_dict({"max_seconds": "12", "max_rate": "48000"})
    assert limits.max_seconds == 12.0 and isinstance(limits.max_rate, int) and limits.max_rate == 48000
    assert Limits.from_dict(None) == Limits()
    with pytest.raises(ValueError, match="Limits.max_rate: expected int"):
        Limits.from_dict({"max_rate": "fast"})
    with pytest.raises(ValueError, match="unknown Limits fields: \\['max_secs'\\]"):
        Limits.from_dict({"max_secs": 3})
