"""Early-stopping rules A, B, C on hand-made histories (METHOD.md section 6)."""

from __future__ import annotations

import math

import pytest

from ser.study import stopping
from ser.study.stopping import STAGE1, STAGE2, FoldStopper, Rules, StopDecision, VectorStopping
from ser.study.training import EpochRecord

NAN = math.nan


def history(n: int, f1=0.9, loss=None, acc=0.9) -> list[EpochRecord]:
    """n evaluated epochs; f1/loss may be constants or functions of the epoch."""
    f1_of = f1 if callable(f1) else (lambda e: f1)
    loss_of = loss if callable(loss) else (lambda e: 1.0 + 0.001 * math.sin(e))  # wobbly: no B1
    return [EpochRecord(e, 1.0, loss_of(e), acc, f1_of(e)) for e in range(1, n + 1)]


def healthy_f1(e: int) -> float:
    """Well above every threshold and still improving by > 1.2 points per 40 epochs,
    with > 1 point changes every 4 epochs (so neither B2 nor B3 fires)."""
    return 0.60 + 0.002 * e + (0.015 if e % 8 < 4 else 0.0)


def run(stopper, hist):
    """Feed the history epoch by epoch; return (decision, epoch) of the first stop."""
    for i in range(1, len(hist) + 1):
        d = stopper(hist[:i])
        if d is not None:
            return d, hist[i - 1].epoch
    return None, None


# --------------------------------------------------------------------------- presets and data


def test_stage_presets_match_method():
    a1 = [(r.epoch, round(100 * r.min_f1), r.rule_id) for r in STAGE1.a]
    assert a1 == [(20, 17, "A1"), (50, 20, "A2"), (75, 24, "A3"), (100, 27, "A4"), (125, 27, "A4"), (150, 36, "A5"), (200, 39, "A6"), (250, 42, "A7")]
    a2 = [round(100 * r.min_f1) for r in STAGE2.a]
    assert a2 == [42, 45, 48, 51, 51, 54, 56, 58]
    assert STAGE1.c == (0.45, 0.42) and STAGE1.c_id == "C1"
    assert STAGE2.c == (0.60, 0.60) and STAGE2.c_id == "C3"
    assert STAGE1.max_epochs == 300 and STAGE1.b
    assert stopping.NONE.a == () and not stopping.NONE.b and stopping.NONE.c is None


def test_rules_round_trip_and_from_recipe_dict():
    assert Rules.from_dict(STAGE1.to_dict()) == STAGE1
    assert Rules.from_dict("stage2") == STAGE2
    recipe = {"a": [[20, 17, "A1"], {"epoch": 50, "min_f1": 0.2, "rule_id": "A2"}], "b": True, "c": "C2", "max_epochs": 300.0}
    rules = Rules.from_dict(recipe)
    assert [(r.epoch, r.min_f1) for r in rules.a] == [(20, 0.17), (50, 0.2)]  # percent read as fraction
    assert rules.c == (0.5, 0.5) and rules.c_id == "C2" and isinstance(rules.max_epochs, int)
    moved_up = Rules.from_dict({"preset": "stage1", "c": "C3"})
    assert moved_up.a == STAGE1.a and moved_up.c_id == "C3"
    assert STAGE1.with_c("C2").c == (0.5, 0.5)
    with pytest.raises(ValueError, match="unknown"):
        Rules.from_dict({"a": [], "bogus": 1})
    with pytest.raises(ValueError):
        Rules.from_dict({"c": "C9"})


# --------------------------------------------------------------------------- A rules

A_CASES = [("A1", 20, 0.17), ("A2", 50, 0.20), ("A3", 75, 0.24), ("A4", 100, 0.27), ("A4", 125, 0.27), ("A5", 150, 0.36), ("A6", 200, 0.39), ("A7", 250, 0.42)]


@pytest.mark.parametrize("rule_id,epoch,threshold", A_CASES)
def test_a_rule_abandons_the_vector_at_its_epoch(rule_id, epoch, threshold):
    # F1 healthy until the epoch, then just under the threshold at that epoch.
    def f1(e):
        return threshold - 0.001 if e == epoch else healthy_f1(e)

    rules = Rules(a=STAGE1.a, b=False, c=None)
    decision, at = run(FoldStopper(rules), history(epoch + 5, f1=f1))
    assert decision == StopDecision(rule_id, "vector") and at == epoch
    # Just at the threshold: no stop.
    decision, _ = run(FoldStopper(rules), history(epoch + 5, f1=lambda e: threshold if e == epoch else healthy_f1(e)))
    assert decision is None


def test_a_rules_stage2_thresholds():
    rules = Rules(a=STAGE2.a, b=False)
    decision, at = run(FoldStopper(rules), history(30, f1=0.41))
    assert decision == StopDecision("A1", "vector") and at == 20


def test_a_rule_checked_at_first_evaluation_after_its_epoch():
    # Validation every 3 epochs: epoch 20 is not evaluated, epoch 21 is.
    hist = [EpochRecord(e, 1.0, 1.0 if e % 3 == 0 else NAN, 0.1 if e % 3 == 0 else NAN, 0.10 if e % 3 == 0 else NAN) for e in range(1, 25)]
    decision, at = run(FoldStopper(Rules(a=STAGE1.a, b=False)), hist)
    assert decision == StopDecision("A1", "vector") and at == 21


# --------------------------------------------------------------------------- B rules


def test_b1_rising_validation_loss_stops_the_fold():
    # Loss falls until epoch 40, then rises steadily: B1 at the first epoch > 50,
    # multiple of 4, with rises at e-12..e (e-16 >= 40): epoch 56.
    def loss(e):
        return 1.0 - 0.01 * e if e <= 40 else 0.6 + 0.01 * (e - 40)

    decision, at = run(FoldStopper(Rules(a=(), b=True)), history(80, f1=healthy_f1, loss=loss))
    assert decision == StopDecision("B1", "fold") and at == 56


def test_b1_needs_all_four_steps_and_epoch_over_50():
    # Rising everywhere, but B1 may only fire after epoch 50 and on multiples of 4: 52.
    decision, at = run(FoldStopper(Rules(a=(), b=True)), history(60, f1=healthy_f1, loss=lambda e: 0.5 + 0.01 * e))
    assert decision == StopDecision("B1", "fold") and at == 52
    # One step that does not rise (epoch 48 below epoch 44) defers B1 to 64.
    bump = lambda e: 0.5 + 0.01 * e - (0.2 if e == 48 else 0.0)  # noqa: E731
    decision, at = run(FoldStopper(Rules(a=(), b=True)), history(70, f1=healthy_f1, loss=bump))
    assert decision == StopDecision("B1", "fold") and at == 64


def test_b2_flat_f1_stops_the_fold():
    # F1 moves by less than 1 point per 4-epoch step from epoch 40 on; loss wobbles.
    def f1(e):
        return 0.5 + 0.01 * e if e < 40 else 0.9 + 0.001 * (e % 3)

    decision, at = run(FoldStopper(Rules(a=(), b=True)), history(80, f1=f1))
    assert decision == StopDecision("B2", "fold") and at == 56
    # A change of 1.0 point or more at each step: not B2.
    def f1_steps(e):
        return 0.5 + 0.003 * e  # +1.2 points per 4 epochs

    decision, _ = run(FoldStopper(Rules(a=(), b=True)), history(100, f1=f1_steps))
    assert decision is None


def test_b3_slow_f1_gain_over_40_epochs():
    # F1 jitters (so B2 never fires) around a trend of +1.0 point per 40 epochs:
    # B3 at the first multiple of 40 above 110, i.e. 120.
    def f1(e):
        return 0.5 + 0.00025 * e + (0.02 if e % 8 < 4 else 0.0)

    decision, at = run(FoldStopper(Rules(a=(), b=True)), history(130, f1=f1))
    assert decision == StopDecision("B3", "fold") and at == 120
    # +1.6 points over 40 epochs is enough to go on.
    def f1_ok(e):
        return 0.5 + 0.0004 * e + (0.02 if e % 8 < 4 else 0.0)

    decision, _ = run(FoldStopper(Rules(a=(), b=True)), history(130, f1=f1_ok))
    assert decision is None


def test_b_rules_off_and_unevaluated_epochs():
    rising = history(60, f1=healthy_f1, loss=lambda e: 0.5 + 0.01 * e)
    assert run(FoldStopper(Rules(a=(), b=False)), rising)[0] is None
    # Validation missing at epoch 44: B1 cannot look at e-8 for 52, fires at 64 (44 out of window).
    holes = [r if r.epoch != 44 else EpochRecord(44, 1.0) for r in rising]
    decision, at = run(FoldStopper(Rules(a=(), b=True, max_epochs=300)), holes + history(70, f1=healthy_f1, loss=lambda e: 0.5 + 0.01 * e)[60:])
    assert decision == StopDecision("B1", "fold") and at == 64


def test_max_epochs_stops_the_fold():
    decision, at = run(FoldStopper(Rules(a=(), b=False, max_epochs=30)), history(40))
    assert decision == StopDecision("max_epochs", "fold") and at == 30


# --------------------------------------------------------------------------- C rules and the B cap


@pytest.mark.parametrize("c_id,f1,acc", [("C1", 0.45, 0.42), ("C2", 0.50, 0.50), ("C3", 0.60, 0.60)])
def test_c_rules_need_both_f1_and_accuracy_under(c_id, f1, acc):
    vs = VectorStopping(Rules(a=(), b=True, c=c_id))
    assert vs.after_fold(f1 - 0.01, acc + 0.01) is None  # only F1 under
    assert vs.after_fold(f1 + 0.01, acc - 0.01) is None  # only accuracy under
    assert vs.after_fold(f1, acc) is None  # at the thresholds
    assert vs.after_fold(f1 - 0.01, acc - 0.01) == c_id
    assert VectorStopping(Rules(c=None)).after_fold(0.0, 0.0) is None


def test_b_stop_caps_later_folds():
    vs = VectorStopping(STAGE1)
    rising = history(80, f1=healthy_f1, loss=lambda e: 1.0 - 0.01 * e if e <= 40 else 0.6 + 0.01 * (e - 40))
    first = vs.fold_stopper()
    decision, at = run(first, rising)
    assert decision.rule == "B1" and at == 56 and vs.cap == 56
    # The next fold is healthy but may run at most 56 epochs.
    second = vs.fold_stopper()
    assert second.max_epochs == 56
    decision, at = run(second, history(100, f1=healthy_f1))
    assert decision == StopDecision("cap", "fold") and at == 56
    assert vs.cap == 56  # a cap stop is not a B stop
    # A later B stop at an earlier epoch lowers the cap again.
    third = vs.fold_stopper()
    decision, at = run(third, history(60, f1=healthy_f1, loss=lambda e: 0.5 + 0.01 * e))
    assert decision.rule == "B1" and at == 52 and vs.cap == 52
    assert [e for e in vs.events] == [("B1", 56), ("cap", 56), ("B1", 52)]


def test_a_rule_takes_precedence_over_b():
    # Validation from epoch 84 on, loss rising and F1 0.2: at epoch 100 both B1 and A4 hold.
    hist = [EpochRecord(e, 1.0) for e in range(1, 84)] + [EpochRecord(e, 1.0, 0.5 + 0.01 * e, 0.2, 0.2) for e in range(84, 101)]
    assert stopping.check_b(hist) == StopDecision("B1", "fold")
    decision, at = run(FoldStopper(Rules(a=STAGE1.a[3:4], b=True)), hist)
    assert decision == StopDecision("A4", "vector") and at == 100


def test_after_fold_reports_stops_the_stopper_never_saw():
    # A fold resumed from a checkpoint that had already stopped by B1 at 60 never calls
    # its stopper; after_fold carries the cap anyway, and a seen stop is not counted twice.
    vs = VectorStopping(STAGE1)
    vs.fold_stopper()
    assert vs.after_fold(0.7, 0.7, stopped_by="B1", epoch=60) is None
    assert vs.cap == 60 and vs.events == [("B1", 60)]
    stopper = vs.fold_stopper()
    decision, at = run(stopper, history(60, f1=healthy_f1, loss=lambda e: 0.5 + 0.01 * e))
    assert decision.rule == "B1" and at == 52
    vs.after_fold(0.7, 0.7, stopped_by="B1", epoch=52)
    assert vs.cap == 52 and vs.events == [("B1", 60), ("B1", 52)]
    # A replayed vector (no stoppers at all) gets the same cap.
    replay = VectorStopping(STAGE1)
    for stop, epoch in (("B1", 60), (None, 60), ("B3", 120)):
        replay.after_fold(0.7, 0.7, stopped_by=stop, epoch=epoch)
    assert replay.cap == 60


def test_rules_have_one_name_everywhere():
    """Rankings, logs and the pipeline's recipe table name a stage's rules with the same function."""
    from dataclasses import replace

    assert stopping.rules_name(replace(stopping.STAGE1, max_epochs=7)) == "stage1"  # a preset, whatever its cap
    assert stopping.rules_name(stopping.NONE) == "none"
    mixed = replace(stopping.STAGE2, b=False)
    assert stopping.rules_name(mixed) == "A:stage2, no B, C3"
    assert stopping.rules_name(replace(mixed, a=((3, 0.5),), c=None)) == "A:custom, no B, no C"
