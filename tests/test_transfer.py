"""Transfer learning: head replacement, freeze subsets (a)-(g), the LR x batch grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ser.study import models, transfer
from ser.data.dataset import FeatureSet
from ser.data.features import FeatureSpec
from ser.study.training import TrainConfig, fit

SPEC = models.ArchSpec(cnn="squirtle", in_size=30, n_classes=7, conv_channels=(8, 8, 8), fc_features=(32, 32), dropout=0.4)


def patterned(n: int, n_classes: int, seed: int = 0, size: int = 30) -> FeatureSet:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes)
    images = rng.random((n, size, size)).astype(np.float32) * 0.6
    band = size // n_classes
    for i, c in enumerate(labels):
        images[i, c * band : (c + 1) * band, :] += 0.4
    ids = np.array([f"g{seed}-{i}" for i in range(n)])
    return FeatureSet(images, labels.astype(np.int64), tuple(f"e{i}" for i in range(n_classes)), FeatureSpec(size=size),
                      speaker=np.array([f"s{i % 5}" for i in range(n)]), corpus=np.array(["synthetic-aesdd"] * n),
                      source_id=ids, group=ids.copy(), augment=np.array([""] * n))


@pytest.fixture(scope="module")
def english() -> models.ModelBundle:
    torch.manual_seed(0)
    model = models.build(SPEC)
    fit(model, patterned(70, 7), None, TrainConfig(epochs=1, batch_size=32, lr=1e-3, device="cpu"), progress=False)
    model.eval()
    return models.ModelBundle(model, SPEC, tuple(f"e{i}" for i in range(7)), FeatureSpec(size=30).to_dict(), {})


def test_subsets_are_the_studys_nested_prefixes():
    order = models.SquirtleNet.layer_order
    assert transfer.FREEZE_SUBSETS["a"] == ("conv1", "bn", "conv2", "conv3", "fc1", "dropout")
    assert transfer.FREEZE_SUBSETS["e"] == ("conv1", "bn") and transfer.FREEZE_SUBSETS["g"] == ()
    letters = list(transfer.SUBSETS)
    assert letters == list("abcdefg")
    for bigger, smaller in zip(letters, letters[1:]):
        frozen = transfer.FREEZE_SUBSETS[bigger]
        assert set(transfer.FREEZE_SUBSETS[smaller]) < set(frozen)
        assert tuple(order[: len(frozen)]) == frozen  # each is a prefix of the forward order
    assert transfer.parse_subsets("all") == tuple("abcdefg")
    assert transfer.parse_subsets(["g", "a,c"]) == ("a", "c", "g")
    assert transfer.parse_subsets("eg") == ("e", "g")
    with pytest.raises(ValueError, match="subset"):
        transfer.parse_subsets("z")
    with pytest.raises(ValueError, match="no layer"):
        transfer.freeze(models.build(SPEC.with_(cnn="bulba")), "a")  # BulbaNET has no dropout


def test_default_grid_is_six_log_spaced_lrs_and_four_batches():
    assert len(transfer.DEFAULT_LRS) == 6
    assert transfer.DEFAULT_LRS[0] == pytest.approx(1e-6) and transfer.DEFAULT_LRS[-1] == pytest.approx(1e-4)
    ratios = np.diff(np.log10(transfer.DEFAULT_LRS))
    assert np.allclose(ratios, ratios[0])
    assert transfer.DEFAULT_BATCHES == (16, 32, 48, 64)
    cells = transfer.grid("ag", transfer.DEFAULT_LRS, transfer.DEFAULT_BATCHES, scratch_lrs=transfer.SCRATCH_LRS)
    assert len(cells) == 2 * 24 + 3 and cells[-1] == ("scratch", 1e-4, 32)


def test_adapt_replaces_the_head_and_keeps_the_body(english):
    model = transfer.adapt(english, 5, "e", seed=1)
    assert model.fc3.out_features == 5 and model.spec.n_classes == 5
    for name in ("conv1", "bn", "conv2", "conv3", "fc1", "fc2"):
        for (k, a), b in zip(getattr(model, name).state_dict().items(), getattr(english.model, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k}"
    assert model.frozen_modules == ("conv1", "bn")
    assert not any(p.requires_grad for p in model.conv1.parameters()) and not any(p.requires_grad for p in model.bn.parameters())
    assert all(p.requires_grad for p in model.conv2.parameters())
    assert english.model.fc3.out_features == 7  # the bundle itself is untouched


@pytest.mark.parametrize("subset", ["a", "b", "e", "g"])
def test_frozen_modules_do_not_change_and_a_switches_dropout_off(english, subset):
    greek = patterned(40, 5, seed=2)
    model = transfer.adapt(english, 5, subset, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dropout_modes = []
    model.dropout.register_forward_hook(lambda m, i, o: dropout_modes.append(m.training))
    fit(model, greek, None, TrainConfig(epochs=1, batch_size=20, lr=1e-2, device="cpu"), progress=False)
    after = model.state_dict()
    frozen = transfer.FREEZE_SUBSETS[subset]
    for key in after:
        module = key.split(".")[0]
        if module in frozen:
            assert torch.equal(before[key], after[key]), key  # weights and BN running stats
        elif key.endswith("weight") and module in ("fc2", "fc3"):
            assert not torch.equal(before[key], after[key]), key
    # (a) and (b) freeze the same parameters; (a) also keeps the dropout off.
    assert all(m is (subset != "a") for m in dropout_modes)


def test_a_and_b_freeze_the_same_parameters(english):
    a, b = transfer.adapt(english, 5, "a"), transfer.adapt(english, 5, "b")
    assert transfer.trainable_parameters(a) == transfer.trainable_parameters(b)
    assert transfer.trainable_parameters(transfer.adapt(english, 5, "g")) == sum(p.numel() for p in a.parameters())


def test_small_grid_with_scratch_baseline_and_summary(english):
    greek = patterned(60, 5, seed=3)
    train, test = greek.subset(np.arange(45)), greek.subset(np.arange(45, 60))
    seen = []
    runs, best = transfer.run_grid(english, train, test, subsets=("a", "g"), lrs=(1e-3, 3e-3), batches=(16,), epochs=2,
                                   device="cpu", eval_every=1, scratch_lrs=(1e-3,), progress=False, on_run=seen.append)
    assert [(r.subset, r.lr) for r in runs] == [("a", 1e-3), ("a", 3e-3), ("g", 1e-3), ("g", 3e-3), ("scratch", 1e-3)]
    assert seen == runs
    assert all(r.epochs == 2 and 0 <= r.accuracy <= 1 and r.best_epoch in (1, 2) for r in runs)
    assert runs[0].trainable < runs[2].trainable == runs[4].trainable
    assert best["run"].best_test_loss == min(r.best_test_loss for r in runs)
    assert best["arch"].n_classes == 5 and best["state"]["fc3.weight"].shape[0] == 5
    rows = transfer.summary(runs)
    assert [r["subset"] for r in rows] == ["a", "g", "scratch"]
    assert rows[0]["runs"] == 2 and rows[0]["mean_accuracy"] == pytest.approx(100 * np.mean([runs[0].accuracy, runs[1].accuracy]))
    assert rows[2]["frozen"] == "(from scratch)"


def test_size_mismatch_is_refused(english):
    with pytest.raises(ValueError, match="30x30"):
        transfer.check_compatible(english, patterned(10, 5, size=20))


def test_cross_validated_cell_uses_the_training_side_only(english):
    """The study's scoring: k folds of the training side; the run holds fold means."""
    train = patterned(60, 5, seed=3)
    run = transfer.cross_validate(english, train, "g", 1e-3, 16, 2, folds=3, seed=0, device="cpu", eval_every=1, progress=False)
    assert run.scored_on == "3-fold CV" and run.subset == "g" and run.lr == 1e-3 and run.batch_size == 16 and run.epochs == 2
    assert 0.0 <= run.accuracy <= 1.0 and run.test_loss > 0
    from ser.study import splits

    per_fold = []
    for k, (tr, va) in enumerate(splits.kfold(train, np.arange(len(train)), 3, seed=0)):
        runs, _ = transfer.run_grid(english, train.subset(tr), train.subset(va), ("g",), (1e-3,), (16,), 2, seed=k, device="cpu", eval_every=1, progress=False)
        per_fold.append(runs[0].accuracy)
    assert run.accuracy == pytest.approx(np.mean(per_fold))  # the mean over the folds, each validated on its own rows
    with pytest.raises(ValueError):
        transfer.cross_validate(english, train, "g", 1e-3, 16, 1, folds=1, device="cpu", progress=False)


def test_best_cell_is_the_highest_mean_accuracy_then_f1():
    def run(lr, acc, f1):
        return transfer.TransferRun("g", lr, 16, 2, 0, acc, f1, 1.0, 1, acc, f1, 1.0, 10, 0.1, "5-fold CV")

    runs = [run(1e-5, 0.50, 0.40), run(2.68e-5, 0.60, 0.50), run(1e-4, 0.60, 0.55), run(1e-6, float("nan"), float("nan"))]
    assert transfer.best_cell(runs).lr == 1e-4
    with pytest.raises(ValueError, match="empty grid"):
        transfer.best_cell([])
