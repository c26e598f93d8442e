"""Report writers: metrics.json, plots, tables, seed summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ser.study import report
from ser.study.training import EpochRecord, Evaluation


def fake_evaluation() -> Evaluation:
    cm = [[8, 2, 0], [1, 9, 0], [0, 3, 7]]
    return Evaluation(
        loss=0.5, accuracy=0.8, macro_f1=0.79,
        per_class={name: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 10} for name in ("happy", "sad", "angry")},
        confusion=cm, probabilities=np.full((30, 3), 1 / 3, np.float32), labels=("happy", "sad", "angry"),
    )


def history(n: int = 12) -> list[EpochRecord]:
    return [EpochRecord(e, 2.0 / e, 1.5 / e if e % 2 == 0 else math.nan, 0.5 + e / 100, 0.4 + e / 100) for e in range(1, n + 1)]


def test_metrics_json_has_the_contract_keys(tmp_path):
    data = report.metrics(fake_evaluation(), best_epoch=7, seed=3, split="speaker", config_hash="abc", nan_value=math.nan, arr=np.arange(2))
    path = report.write_metrics(tmp_path / "out" / "metrics.json", data)
    loaded = json.loads(path.read_text())  # strict JSON: NaN written as null
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "best_epoch", "seed", "split"):
        assert key in loaded
    assert loaded["best_epoch"] == 7 and loaded["seed"] == 3 and loaded["split"] == "speaker"
    assert loaded["per_class"]["sad"]["support"] == 10
    assert loaded["confusion_matrix"][2] == [0, 3, 7]
    assert loaded["nan_value"] is None and loaded["arr"] == [0, 1] and loaded["config_hash"] == "abc"
    assert "NaN" not in path.read_text()


def test_plots_are_png_files(tmp_path):
    curve = report.plot_learning_curve(history(), tmp_path / "learning_curve.png", title="t", best_epoch=10)
    cm = report.plot_confusion(fake_evaluation().confusion, ("happy", "sad", "angry"), tmp_path / "confusion_matrix.png", title="cm")
    raw = report.plot_confusion([[1, 0], [0, 0]], ("a", "b"), tmp_path / "raw.png", normalize=False)  # an empty row is fine
    for path in (curve, cm, raw):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    # A history with no validation at all still plots.
    report.plot_learning_curve([EpochRecord(1, 1.0), EpochRecord(2, 0.9)], tmp_path / "noval.png")


def test_tables_markdown_and_csv(tmp_path):
    rows = [{"epoch": 10, "test_loss": 1.23456, "accuracy": 81.88, "macro_f1": math.nan}, {"epoch": 20, "test_loss": 1.1, "accuracy": 82.0, "macro_f1": 80.0}]
    md = report.markdown_table(rows)
    assert md.splitlines()[0] == "| epoch | test_loss | accuracy | macro_f1 |"
    assert "| 10 | 1.2346 | 81.8800 |  |" in md
    md_path, csv_path = report.write_table(rows, tmp_path / "t", title="T")
    assert md_path.read_text().startswith("# T")
    assert csv_path.read_text().splitlines()[0] == "epoch,test_loss,accuracy,macro_f1"
    assert report.markdown_table([]) == "(no rows)\n"


def test_improvement_table_in_percent(tmp_path):
    recs = [EpochRecord(10, 1.0, 1.4, 0.7, 0.69), EpochRecord(400, 0.9, 1.348, 0.8188, 0.8183)]
    rows = report.improvement_rows(recs)
    assert rows[-1] == {"epoch": 400, "test_loss": 1.348, "accuracy": pytest.approx(81.88), "macro_f1": pytest.approx(81.83)}
    md, csv = report.write_improvements(recs, tmp_path / "improvements")
    assert md.name == "improvements.md" and csv.name == "improvements.csv"
    assert "| 400 | 1.3480 | 81.88 | 81.83 |" in md.read_text()


def test_summarise_seeds_mean_and_sample_std():
    runs = [
        {"seed": s, "accuracy": a, "macro_f1": f, "best_epoch": e, "per_class": {"happy": {"f1": f}, "sad": {"f1": 1 - f}}}
        for s, a, f, e in [(0, 0.80, 0.78, 40), (1, 0.82, 0.80, 60), (2, 0.84, 0.85, 50)]
    ]
    s = report.summarise_seeds(runs)
    assert s["n"] == 3 and s["seeds"] == [0, 1, 2]
    assert s["accuracy"]["mean"] == pytest.approx(0.82)
    assert s["accuracy"]["std"] == pytest.approx(np.std([0.80, 0.82, 0.84], ddof=1))
    assert s["best_epoch"]["mean"] == pytest.approx(50) and s["accuracy"]["min"] == 0.80 and s["accuracy"]["max"] == 0.84
    assert s["per_class_f1"]["sad"]["mean"] == pytest.approx(1 - np.mean([0.78, 0.80, 0.85]))
    one = report.summarise_seeds(runs[:1])
    assert one["accuracy"]["std"] == 0.0
    rows = report.seeds_rows(runs, s)
    assert [r["seed"] for r in rows] == [0, 1, 2, "mean", "std"]
    assert rows[3]["accuracy"] == pytest.approx(82.0)


def test_digits_per_column():
    md = report.markdown_table([{"a": 1.23456, "b": 1.23456}], digits={"a": 2})
    assert "| 1.23 | 1.2346 |" in md


def test_fold_mean_history_averages_the_folds_that_ran_each_epoch(tmp_path):
    fold_a = [EpochRecord(1, 2.0, 1.8, 0.2, 0.1), EpochRecord(2, 1.5, 1.6, 0.4, 0.3), EpochRecord(3, 1.0, 1.4, 0.6, 0.5)]
    fold_b = [EpochRecord(1, 1.0, 1.2, 0.4, 0.3), EpochRecord(2, 0.5, math.nan, math.nan, math.nan)]  # stopped at 2, not evaluated
    rows = report.fold_mean_history([fold_a, fold_b])
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["folds"] for r in rows] == [2, 2, 1]
    assert rows[0]["val_loss"] == pytest.approx(1.5) and rows[0]["macro_f1"] == pytest.approx(0.2)
    assert rows[1]["train_loss"] == pytest.approx(1.0) and rows[1]["val_loss"] == pytest.approx(1.6)  # NaN left out
    assert rows[2]["accuracy"] == pytest.approx(0.6)
    path = report.plot_candidates({"v1": rows, "v2": report.fold_mean_history([fold_b])}, tmp_path / "c.png", "t", winner="v1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
