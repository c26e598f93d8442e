"""UA, WA and macro F1 (ser.study.metrics) on hand-made cases and against scikit-learn's definitions."""

import math

import numpy as np
import pytest

from ser.study import metrics


def test_ua_is_the_mean_recall_and_differs_from_wa_on_unbalanced_data():
    # 8 of class 0, 2 of class 1; a model that always says 0.
    y = np.array([0] * 8 + [1] * 2)
    pred = np.zeros(10, dtype=np.int64)
    s = metrics.scores(y, pred)
    assert s.wa == pytest.approx(0.8)
    assert s.ua == pytest.approx(0.5)  # recall 1.0 for class 0, 0.0 for class 1
    assert s.macro_f1 == pytest.approx((2 * 0.8 / 1.8 + 0.0) / 2)


def test_hand_made_three_class_case():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 2, 2])
    s = metrics.scores(y, pred)
    assert s.wa == pytest.approx(4 / 6)
    assert s.ua == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    cm = metrics.confusion(y, pred, 4)  # a fourth class nobody has still gets its row and column
    assert cm.shape == (4, 4) and cm[0, 0] == 2 and cm[0, 1] == 1 and cm[1, 2] == 1 and cm[3].sum() == 0


def test_scores_agree_with_scikit_learn_on_random_cases():
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    rng = np.random.default_rng(0)
    for trial in range(20):
        y = rng.integers(0, 5, 40)
        pred = np.where(rng.random(40) < 0.5, y, rng.integers(0, 5, 40))
        if trial % 4 == 0:
            y[y == 4] = 3  # a class absent from the labels: UA averages the classes that occur
        s = metrics.scores(y, pred)
        present = np.unique(y)
        assert s.ua == pytest.approx(recall_score(y, pred, labels=present, average="macro", zero_division=0))
        assert s.wa == pytest.approx(accuracy_score(y, pred))
        assert s.macro_f1 == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_empty_set_is_nan_and_summary_skips_nan_runs():
    assert all(math.isnan(v) for v in metrics.scores(np.array([]), np.array([])).to_dict().values())
    runs = [metrics.Scores(0.5, 0.6, 0.4), metrics.Scores(0.7, 0.8, 0.6), metrics.Scores(math.nan, math.nan, math.nan)]
    summary = metrics.summarise(runs)
    assert summary["ua"]["mean"] == pytest.approx(0.6) and summary["ua"]["std"] == pytest.approx(0.1) and summary["ua"]["n"] == 2
    assert "UA 60.0 +- 10.0%" in metrics.format_summary(summary)


def test_per_class_reports_every_class():
    out = metrics.per_class(np.array([0, 1, 1]), np.array([0, 1, 0]), ("a", "b", "c"))
    assert out["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert out["c"]["support"] == 0 and out["c"]["f1"] == 0.0
