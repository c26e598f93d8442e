"""fit / evaluate / final_train on tiny networks and learnable synthetic images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ser.study import models, stopping
from ser.data.dataset import FeatureSet
from ser.data.features import FeatureSpec
from ser.study.training import EpochRecord, TrainConfig, class_log_prior, evaluate, final_train, fit, improvements, resolve_device

TINY = models.ArchSpec(cnn="squirtle", in_size=30, n_classes=4, conv_channels=(8, 8, 8), fc_features=(32, 32), dropout=0.25)


def patterned(n: int = 200, n_classes: int = 4, size: int = 30, noise: float = 0.6, seed: int = 0) -> FeatureSet:
    """Each class lights a different horizontal band (a 'formant'), under uniform noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes)
    images = rng.random((n, size, size)).astype(np.float32) * noise
    band = size // n_classes
    for i, c in enumerate(labels):
        images[i, c * band : (c + 1) * band, :] += 1.0 - noise
    ids = np.array([f"u{seed}-{i}" for i in range(n)])
    return FeatureSet(
        images=np.clip(images, 0, 1), labels=labels.astype(np.int64), label_names=tuple(f"class{i}" for i in range(n_classes)),
        spec=FeatureSpec(size=size), speaker=np.array([f"s{i % 5}" for i in range(n)]), corpus=np.array(["synthetic"] * n),
        source_id=ids, group=ids.copy(), augment=np.array([""] * n),
    )


def tiny(seed: int = 0, **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(TINY.with_(**changes))


def test_config_round_trip_casts_kfp_floats():
    cfg = TrainConfig.from_dict({"epochs": 12.0, "batch_size": 48.0, "lr": "1e-4", "seed": 3.0, "eval_every": 2.0})
    assert (cfg.epochs, cfg.batch_size, cfg.seed, cfg.eval_every) == (12, 48, 3, 2)
    assert all(isinstance(v, int) for v in (cfg.epochs, cfg.batch_size, cfg.seed, cfg.eval_every))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig() == TrainConfig(epochs=300, batch_size=32, lr=6e-5, seed=0, eval_every=1, device="auto")
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError):
        TrainConfig(device="tpu")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_small_network_learns_well_above_chance():
    data = patterned(240, seed=1)
    train, val = data.subset(np.arange(200)), data.subset(np.arange(200, 240))
    seen = []
    result = fit(tiny(), train, val, TrainConfig(epochs=6, batch_size=16, lr=2e-3, device="cpu"), on_epoch=seen.append, progress=False)
    assert [r.epoch for r in result.history] == list(range(1, 7)) and seen == result.history
    assert result.history[-1].train_loss < result.history[0].train_loss
    best = result.best
    assert best is not None and best.val_loss == result.best_val_loss == min(r.val_loss for r in result.history)
    assert best.accuracy >= 0.8 and best.macro_f1 >= 0.8  # chance is 0.25
    assert result.stopped_by is None and not result.abandoned and result.seconds > 0
    assert set(result.best_state) == set(tiny().state_dict())


def test_evaluate_reports_per_class_confusion_and_probabilities():
    data = patterned(120, seed=2)
    model = tiny()
    fit(model, data, None, TrainConfig(epochs=8, batch_size=16, lr=2e-3, device="cpu"), progress=False)
    ev = evaluate(model, data, batch_size=50)
    assert ev.probabilities.shape == (120, 4)
    assert np.allclose(ev.probabilities.sum(1), 1.0, atol=1e-5)
    cm = np.array(ev.confusion)
    assert cm.shape == (4, 4) and cm.sum() == 120
    assert ev.accuracy == pytest.approx(np.trace(cm) / 120)
    assert set(ev.per_class) == set(data.label_names)
    assert sum(v["support"] for v in ev.per_class.values()) == 120
    assert ev.macro_f1 == pytest.approx(np.mean([v["f1"] for v in ev.per_class.values()]))
    assert ev.accuracy > 0.5
    assert ev.to_dict()["confusion_matrix"] == ev.confusion


def test_no_validation_keeps_last_state_and_nan_fields():
    data = patterned(40)
    model = tiny()
    result = fit(model, data, None, TrainConfig(epochs=2, batch_size=16, lr=1e-3, device="cpu"), progress=False)
    assert math.isnan(result.best_val_loss) and result.best_epoch == 2
    assert all(math.isnan(r.val_loss) and math.isnan(r.macro_f1) for r in result.history)
    assert all(torch.equal(result.best_state[k], v) for k, v in model.state_dict().items())


def test_eval_every_leaves_nan_between_evaluations():
    data = patterned(60)
    result = fit(tiny(), data.subset(np.arange(40)), data.subset(np.arange(40, 60)), TrainConfig(epochs=5, eval_every=2, batch_size=20, lr=1e-3, device="cpu"), progress=False)
    evaluated = [r.epoch for r in result.history if r.evaluated]
    assert evaluated == [2, 4, 5]  # every 2nd epoch, and the last
    assert result.best_epoch in evaluated


def test_a_lone_last_sample_sits_out_the_epoch():
    # 33 rows at batch 32 would leave a batch of one, which batch-norm cannot train on.
    data = patterned(33)
    result = fit(tiny(cnn="bulba"), data, None, TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False)
    assert len(result.history) == 1 and math.isfinite(result.history[0].train_loss)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    data = patterned(90, seed=3)
    train, val = data.subset(np.arange(70)), data.subset(np.arange(70, 90))
    cfg = TrainConfig(epochs=5, batch_size=16, lr=1e-3, seed=7, device="cpu")

    straight = tiny(seed=11)
    ref = fit(straight, train, val, cfg, progress=False)

    ckpt = tmp_path / "ckpt.pt"
    first = tiny(seed=11)
    fit(first, train, val, cfg.with_(epochs=2), checkpoint=ckpt, progress=False)  # "killed" after epoch 2
    torch.manual_seed(999)  # the restarted process's RNG state is irrelevant
    resumed_model = tiny(seed=12)  # fresh weights: the checkpoint must restore them
    seen = []
    resumed = fit(resumed_model, train, val, cfg, checkpoint=ckpt, on_epoch=seen.append, progress=False)

    assert [r.epoch for r in seen] == [3, 4, 5]
    assert resumed.history == ref.history  # exact floats, including validation
    assert resumed.best_epoch == ref.best_epoch and resumed.best_val_loss == ref.best_val_loss
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    for key, value in ref.best_state.items():
        assert torch.equal(resumed.best_state[key], value), key

    # A finished checkpoint is not trained again; another config is refused.
    again = fit(tiny(seed=13), train, val, cfg, checkpoint=ckpt, progress=False)
    assert again.history == ref.history
    with pytest.raises(ValueError, match="another training run"):
        fit(tiny(), train, val, cfg.with_(lr=5e-4), checkpoint=ckpt, progress=False)


def same(a: list[EpochRecord], b: list[EpochRecord]) -> bool:
    """Histories equal to the bit, NaN included."""
    key = lambda r: tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in (r.epoch, r.train_loss, r.val_loss, r.accuracy, r.macro_f1))  # noqa: E731
    return [key(r) for r in a] == [key(r) for r in b]


class Killed(Exception):
    pass


def test_resume_with_sparse_checkpoints_is_still_exact(tmp_path):
    data = patterned(60, seed=4)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-3, seed=1, device="cpu")
    ref_model = tiny()
    ref = fit(ref_model, data, None, cfg, progress=False)

    def kill_after_3(record):
        if record.epoch == 3:
            raise Killed

    ckpt = tmp_path / "c.pt"
    with pytest.raises(Killed):  # checkpoints at epoch 2 only; epoch 3 is lost
        fit(tiny(), data, None, cfg, checkpoint=ckpt, checkpoint_every=2, on_epoch=kill_after_3, progress=False)
    seen = []
    model = tiny(seed=5)
    resumed = fit(model, data, None, cfg, checkpoint=ckpt, checkpoint_every=2, on_epoch=seen.append, progress=False)
    assert [r.epoch for r in seen] == [3, 4]
    assert same(resumed.history, ref.history)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref_model.state_dict().items())


def test_stopper_stops_and_a_vector_stop_abandons(tmp_path):
    data = patterned(40)
    calls = []

    def abandon_at_3(history):
        calls.append(len(history))
        return stopping.StopDecision("A1", "vector") if history[-1].epoch == 3 else None

    cfg = TrainConfig(epochs=10, batch_size=20, lr=1e-3, device="cpu")
    result = fit(tiny(), data, data, cfg, stopper=abandon_at_3, checkpoint=tmp_path / "s.pt", progress=False)
    assert calls == [1, 2, 3] and len(result.history) == 3
    assert result.stopped_by == "A1" and result.abandoned
    # A stopped fold stays stopped when the same fit is started again.
    again = fit(tiny(), data, data, cfg, stopper=abandon_at_3, checkpoint=tmp_path / "s.pt", progress=False)
    assert again.stopped_by == "A1" and len(again.history) == 3

    capped = fit(tiny(), data, data, cfg, stopper=stopping.FoldStopper(stopping.Rules(a=(), b=True), max_epochs=2), progress=False)
    assert capped.stopped_by == "cap" and not capped.abandoned and len(capped.history) == 2


def test_frozen_modules_stay_in_eval_mode_and_unchanged():
    data = patterned(40)
    model = tiny()
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    for p in model.bn.parameters():
        p.requires_grad_(False)
    model.frozen_modules = ("conv1", "bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, data, None, TrainConfig(epochs=2, batch_size=20, lr=1e-2, device="cpu"), progress=False)
    after = model.state_dict()
    for key in ("conv1.weight", "conv1.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["conv2.weight"], after["conv2.weight"])


def test_final_train_keeps_lowest_test_loss_and_lists_improvements():
    data = patterned(100, seed=5)
    train, test = data.subset(np.arange(80)), data.subset(np.arange(80, 100))
    model = tiny()
    result = final_train(model, train, test, TrainConfig(epochs=6, eval_every=2, batch_size=16, lr=2e-3, device="cpu"), progress=False)
    rows = result.improvements
    assert rows and all(r.evaluated for r in rows)
    assert [r.epoch for r in rows] == sorted(r.epoch for r in rows)
    assert all(b.val_loss < a.val_loss for a, b in zip(rows, rows[1:]))
    assert rows[-1].epoch == result.fit.best_epoch
    # The model holds the best weights: its test loss is the best one recorded.
    assert result.evaluation.loss == pytest.approx(result.fit.best_val_loss, rel=1e-5)


def test_improvements_of_a_hand_made_history():
    nan = math.nan
    hist = [EpochRecord(1, 2.0, 1.5, 0.3, 0.3), EpochRecord(2, 1.8, nan, nan, nan), EpochRecord(3, 1.6, 1.2, 0.4, 0.4), EpochRecord(4, 1.4, 1.3, 0.5, 0.5), EpochRecord(5, 1.2, 1.1, 0.6, 0.6)]
    assert [r.epoch for r in improvements(hist)] == [1, 3, 5]


def test_a_diverging_fit_stops_and_abandons():
    data = patterned(40)
    data.images[0, 0, 0] = np.inf  # a poisoned input makes the loss non-finite at once
    result = fit(tiny(), data, data, TrainConfig(epochs=5, batch_size=40, lr=1e-3, device="cpu"), progress=False)
    assert result.stopped_by == "diverged" and result.abandoned and len(result.history) == 1


def test_select_chooses_the_epoch_by_validation_ua_or_loss():
    data = patterned(60, seed=1)
    val = patterned(40, seed=2, noise=0.9)
    cfg = TrainConfig(epochs=6, batch_size=20, lr=3e-3, device="cpu")
    by_ua = fit(tiny(), data, val, cfg, progress=False, select="ua")
    best = max(by_ua.history, key=lambda r: (r.ua, -r.val_loss))
    assert by_ua.best_epoch == best.epoch and by_ua.best_val_loss == best.val_loss
    by_loss = fit(tiny(), data, val, cfg, progress=False)
    assert by_loss.best_epoch == min(by_loss.history, key=lambda r: r.val_loss).epoch
    with pytest.raises(ValueError, match="select must be one of"):
        fit(tiny(), data, val, cfg, progress=False, select="f1")


def test_logit_adjustment_offsets_by_the_log_class_shares():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    assert class_log_prior(labels, 4, 0.0) == 0.0
    offset = class_log_prior(labels, 4, 2.0)  # class 3 has no row: counted as one, so finite
    assert torch.allclose(offset, 2.0 * torch.log(torch.tensor([3.0, 1.0, 2.0, 1.0]) / 7.0))
    with pytest.raises(ValueError, match="logit_adjust"):
        TrainConfig(logit_adjust=-1)


def test_logit_adjustment_stops_a_majority_class_taking_the_doubtful_rows():
    """Trained on rows where one class is 85% and the patterns are faint, the plain loss
    answers that class for most doubtful rows of a balanced test set; with logit adjustment
    the same network and draws spread its answers and score a higher mean recall (UA)."""
    data = patterned(800, noise=0.92, seed=3)
    majority = np.flatnonzero(data.labels == 0)
    others = np.flatnonzero(data.labels != 0)
    train = data.subset(np.concatenate([majority[:170], others[:30]]))  # 170 of class 0, 30 of the other three
    test = data.subset(np.concatenate([majority[170:320], others[30:480]]))  # about 150 of each class
    shares, uas = [], []
    for tau in (0.0, 1.0):
        model = tiny()
        fit(model, train, None, TrainConfig(epochs=8, batch_size=16, lr=2e-3, device="cpu", logit_adjust=tau), progress=False)
        ev = evaluate(model, test)
        shares.append(float(np.mean(ev.predictions == 0)))
        uas.append(ev.ua)
    assert shares[1] < shares[0] - 0.1
    assert uas[1] > uas[0]
