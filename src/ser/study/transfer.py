"""Transfer an English model to Greek (METHOD.md section 7).

Load an English bundle, replace the last FC layer by a fresh one with as many
outputs as the new label set (5 for AESDD), freeze one of the study's subsets, and
fine-tune over a grid of learning rates and batch sizes; a from-scratch network of
the same architecture is the baseline.

The subsets, with the network's ``layer_order`` names (SquirtleNET/CharmaNET order
conv1, bn, conv2, conv3, fc1, dropout, fc2, fc3):

- (a) conv1, bn, conv2, conv3, fc1, dropout   (b) conv1, bn, conv2, conv3, fc1
- (c) conv1, bn, conv2, conv3                 (d) conv1, bn, conv2
- (e) conv1, bn                               (f) conv1
- (g) nothing

Reading of "frozen": a frozen module's parameters get ``requires_grad=False`` AND
the module stays in eval mode while the rest trains (``model.frozen_modules``,
honoured by :func:`ser.study.training.fit`). So a frozen batch-norm normalises with the
English running statistics and does not update them, and a frozen dropout is off.
That is the only difference between (a) and (b): the same parameters are frozen,
but under (a) the dropout after FC1 no longer drops. (Dropout has no parameters, so
"freezing" it can only mean switching it off.)

Scoring the grid: the study scored each (subset, LR, batch) cell by 5-fold
cross-validation on the Greek training side and touched the test rows only with
the final model: :func:`cross_validate` per cell, :func:`best_cell`, then one
:func:`run_grid` cell on the whole training side tested on the test rows
(``ser transfer --cv-folds 5 --final-epochs 2000``). :func:`run_grid` alone scores
each cell on the rows it is given as validation set; the CLI's default (no
``--cv-folds``) gives it the test split, which is faster but not the study's
protocol, and its per-cell figures are then optimistic (docs/METHOD_DEVIATIONS.md).
The accuracy reported per run is that of the last epoch ("mean accuracy at 150
epochs"), beside the best-checkpoint figures.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ser.study import models
from ser.data.dataset import FeatureSet
from ser.data.features import IMAGE_KINDS, FeatureSpec
from ser.study.training import EpochRecord, TrainConfig, fit

FREEZE_SUBSETS: dict[str, tuple[str, ...]] = {
    "a": ("conv1", "bn", "conv2", "conv3", "fc1", "dropout"),
    "b": ("conv1", "bn", "conv2", "conv3", "fc1"),
    "c": ("conv1", "bn", "conv2", "conv3"),
    "d": ("conv1", "bn", "conv2"),
    "e": ("conv1", "bn"),
    "f": ("conv1",),
    "g": (),
}
SUBSETS: tuple[str, ...] = tuple(FREEZE_SUBSETS)
#: Six log-spaced learning rates from 1e-6 to 1e-4, and the study's batch sizes. The
#: study names six values from 1e-6 to 1e-4 but publishes only its winner, 2.68e-5,
#: which is not among these (docs/METHOD_DEVIATIONS.md).
DEFAULT_LRS: tuple[float, ...] = tuple(float(x) for x in np.logspace(-6, -4, 6))
DEFAULT_BATCHES: tuple[int, ...] = (16, 32, 48, 64)
#: The study's from-scratch SquirtleNET baseline: batch 32, LR 1e-6, 1e-5, 1e-4.
SCRATCH_LRS: tuple[float, ...] = (1e-6, 1e-5, 1e-4)
SCRATCH_BATCH = 32
SCRATCH = "scratch"


def parse_subsets(text: str | Sequence[str]) -> tuple[str, ...]:
    """"all", "a,c,g", "aceg" or a list -> subset names, in a..g order."""
    items = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        item = item.strip().lower()
        if item == "all":
            names.extend(SUBSETS)
            continue
        parts = [p for p in item.replace(",", " ").split()] if ("," in item or " " in item) else list(item)
        for p in parts:
            if p not in FREEZE_SUBSETS:
                raise ValueError(f"unknown freeze subset {p!r}; expected letters a..g or 'all'")
            names.append(p)
    return tuple(s for s in SUBSETS if s in names)


def subset_layers(model: nn.Module, subset: str | Sequence[str]) -> tuple[str, ...]:
    """The module names ``subset`` (a letter a..g, or names) freezes in ``model``;
    ValueError if the network has no such layer (BulbaNET has no dropout)."""
    if isinstance(subset, str) and subset not in FREEZE_SUBSETS:
        raise ValueError(f"unknown freeze subset {subset!r}; expected letters a..g")
    names = FREEZE_SUBSETS[subset] if isinstance(subset, str) else tuple(subset)
    order = getattr(model, "layer_order", ())
    missing = [n for n in names if n not in order or not hasattr(model, n)]
    if missing:
        raise ValueError(f"{type(model).__name__} has no layer {missing} (its layers: {', '.join(order)})")
    return names


def freeze(model: nn.Module, subset: str | Sequence[str]) -> tuple[str, ...]:
    """Freeze the modules of ``subset`` (a letter, or module names); returns the names.

    Parameters get ``requires_grad=False``; the names go to ``model.frozen_modules``
    so training keeps those modules in eval mode. Everything else is unfrozen."""
    names = subset_layers(model, subset)
    for p in model.parameters():
        p.requires_grad_(True)
    for name in names:
        for p in getattr(model, name).parameters():
            p.requires_grad_(False)
    model.frozen_modules = tuple(names)
    return tuple(names)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapt(bundle: models.ModelBundle, n_classes: int, subset: str, seed: int = 0) -> nn.Module:
    """A copy of the bundle's network with a fresh ``n_classes`` head (seeded) and
    ``subset`` frozen."""
    model = copy.deepcopy(bundle.model).cpu()
    torch.manual_seed(seed)
    model.replace_head(n_classes)
    freeze(model, subset)
    return model


def scratch(arch: models.ArchSpec, n_classes: int, seed: int = 0) -> nn.Module:
    """A freshly initialised network of the same architecture (the baseline)."""
    torch.manual_seed(seed)
    model = models.build(arch.with_(n_classes=n_classes))
    model.frozen_modules = ()
    return model


@dataclass
class TransferRun:
    """One grid cell. ``accuracy``/``macro_f1``/``test_loss``: at the last epoch;
    ``best_*``: at the lowest test loss. Accuracy and F1 are fractions."""

    subset: str
    lr: float
    batch_size: int
    epochs: int
    seed: int
    accuracy: float
    macro_f1: float
    test_loss: float
    best_epoch: int
    best_accuracy: float
    best_macro_f1: float
    best_test_loss: float
    trainable: int
    seconds: float
    scored_on: str = "test"  # "test" (the rows the model is tested on) or "5-fold CV" (the training side)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_compatible(bundle: models.ModelBundle, fs: FeatureSet) -> None:
    """The new data must be features of the kind and size the network was built for
    (N x N images for the study's CNNs; N-high frames of any width for the plus
    network and the encoder head)."""
    size = int(fs.images.shape[1]) if fs.images.ndim == 3 else -1
    kind = (bundle.feature_spec or {}).get("kind", fs.spec.kind)
    if kind != fs.spec.kind:
        raise ValueError(f"the model takes {kind} features, the feature set holds {fs.spec.kind}")
    if kind == "whisper" and not fs.spec.matches(FeatureSpec.from_dict(bundle.feature_spec)):
        raise ValueError(f"the model's encoder features are {bundle.feature_spec}, the feature set's {fs.spec.to_dict()}: "
                         "extract the new data with the model's encoder and window")
    if size != bundle.arch.in_size:
        n = bundle.arch.in_size
        if kind in IMAGE_KINDS:
            raise ValueError(f"the model takes {n}x{n} images, the feature set has {size}x{size}")
        raise ValueError(f"the model takes {kind} frames {n} high, the feature set's are {size}")


def grid(subsets: Iterable[str], lrs: Sequence[float], batches: Sequence[int], scratch_lrs: Sequence[float] = (), scratch_batch: int = SCRATCH_BATCH) -> list[tuple[str, float, int]]:
    """The (subset, lr, batch) cells, frozen subsets first, then the scratch baseline."""
    cells = [(s, float(lr), int(b)) for s in subsets for lr in lrs for b in batches]
    cells += [(SCRATCH, float(lr), int(scratch_batch)) for lr in scratch_lrs]
    return cells


def run_grid(
    bundle: models.ModelBundle,
    train: FeatureSet,
    test: FeatureSet,
    subsets: Iterable[str] = SUBSETS,
    lrs: Sequence[float] = DEFAULT_LRS,
    batches: Sequence[int] = DEFAULT_BATCHES,
    epochs: int = 150,
    *,
    seed: int = 0,
    device: str = "auto",
    eval_every: int = 10,
    scratch_lrs: Sequence[float] = (),
    scratch_batch: int = SCRATCH_BATCH,
    progress: bool = True,
    on_run: Callable[[TransferRun], None] | None = None,
) -> tuple[list[TransferRun], dict[str, Any] | None]:
    """Fine-tune every cell of the grid; returns the runs and the best one's
    ``{"run": TransferRun, "state": best state_dict, "history": [...]}`` (lowest test
    loss over all runs), or None for an empty grid."""
    check_compatible(bundle, train)
    n_classes = len(train.label_names)
    runs: list[TransferRun] = []
    best: dict[str, Any] | None = None
    cells = grid(subsets, lrs, batches, scratch_lrs, scratch_batch)
    for i, (subset, lr, batch) in enumerate(cells, 1):
        model = scratch(bundle.arch, n_classes, seed) if subset == SCRATCH else adapt(bundle, n_classes, subset, seed)
        cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, seed=seed, eval_every=eval_every, device=device)
        t0 = time.perf_counter()
        result = fit(model, train, test, cfg, progress=progress, desc=f"[{i}/{len(cells)}] {subset} lr={lr:.2g} b={batch}")
        last = result.history[-1]
        top = result.best or EpochRecord(0, math.nan)
        run = TransferRun(
            subset=subset, lr=lr, batch_size=batch, epochs=last.epoch, seed=seed,
            accuracy=last.accuracy, macro_f1=last.macro_f1, test_loss=last.val_loss,
            best_epoch=result.best_epoch, best_accuracy=top.accuracy, best_macro_f1=top.macro_f1,
            best_test_loss=result.best_val_loss, trainable=trainable_parameters(model),
            seconds=time.perf_counter() - t0,
        )
        runs.append(run)
        if best is None or run.best_test_loss < best["run"].best_test_loss:
            best = {"run": run, "state": result.best_state, "history": result.history, "arch": model.spec}
        if on_run is not None:
            on_run(run)
    return runs, best


def cross_validate(
    bundle: models.ModelBundle,
    train: FeatureSet,
    subset: str,
    lr: float,
    batch: int,
    epochs: int = 150,
    *,
    folds: int = 5,
    seed: int = 0,
    protocol: str = "random",
    device: str = "auto",
    eval_every: int = 10,
    progress: bool = True,
) -> TransferRun:
    """One grid cell scored as the study scored it: ``folds``-fold cross-validation
    on the target language's training side (``train``), never its test rows.

    Each fold fine-tunes a fresh copy of the English network (``subset`` frozen, or
    from scratch for :data:`SCRATCH`) and validates on the fold's held-out rows; the
    returned run holds the means over folds (``test_loss`` and ``best_test_loss``
    are then validation losses, ``best_epoch`` the rounded mean best epoch)."""
    from ser.study import splits

    fold_runs: list[TransferRun] = []
    t0 = time.perf_counter()
    for k, (tr, va) in enumerate(splits.kfold(train, np.arange(len(train)), folds, seed=seed, protocol=protocol)):
        runs, _ = run_grid(bundle, train.subset(tr), train.subset(va), () if subset == SCRATCH else (subset,), (lr,), (batch,), epochs,
                           seed=seed + k, device=device, eval_every=eval_every, scratch_lrs=(lr,) if subset == SCRATCH else (),
                           scratch_batch=batch, progress=progress)
        fold_runs.append(runs[0])

    def mean(name: str) -> float:
        values = [getattr(r, name) for r in fold_runs if not math.isnan(getattr(r, name))]
        return statistics.fmean(values) if values else math.nan

    return TransferRun(
        subset=subset, lr=float(lr), batch_size=int(batch), epochs=fold_runs[0].epochs, seed=seed,
        accuracy=mean("accuracy"), macro_f1=mean("macro_f1"), test_loss=mean("test_loss"),
        best_epoch=int(round(mean("best_epoch"))), best_accuracy=mean("best_accuracy"), best_macro_f1=mean("best_macro_f1"),
        best_test_loss=mean("best_test_loss"), trainable=fold_runs[0].trainable, seconds=time.perf_counter() - t0,
        scored_on=f"{len(fold_runs)}-fold CV",
    )


def best_cell(runs: Sequence[TransferRun]) -> TransferRun:
    """The cell the final model is trained with: the highest mean (cross-validated)
    last-epoch accuracy, as the study's table ranks cells, ties by macro F1."""
    if not runs:
        raise ValueError("empty grid: no cell to choose")
    key = lambda r: (-math.inf if math.isnan(r.accuracy) else r.accuracy, -math.inf if math.isnan(r.macro_f1) else r.macro_f1)  # noqa: E731
    return max(runs, key=key)


def summary(runs: Sequence[TransferRun]) -> list[dict[str, Any]]:
    """Per subset: mean (and std) last-epoch accuracy and F1 over the grid, in percent,
    as the study's transfer table; plus the best cell."""
    rows = []
    order = [s for s in (*SUBSETS, SCRATCH) if any(r.subset == s for r in runs)]
    for subset in order:
        mine = [r for r in runs if r.subset == subset]
        accs = [100 * r.accuracy for r in mine if not math.isnan(r.accuracy)]
        f1s = [100 * r.macro_f1 for r in mine if not math.isnan(r.macro_f1)]
        top = max(mine, key=lambda r: (-math.inf if math.isnan(r.accuracy) else r.accuracy))
        rows.append(
            {
                "subset": subset,
                "frozen": "+".join(FREEZE_SUBSETS.get(subset, ())) or ("-" if subset != SCRATCH else "(from scratch)"),
                "runs": len(mine),
                "mean_accuracy": statistics.fmean(accs) if accs else math.nan,
                "std_accuracy": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "mean_macro_f1": statistics.fmean(f1s) if f1s else math.nan,
                "best_accuracy": 100 * top.accuracy,
                "best_lr": top.lr,
                "best_batch": top.batch_size,
            }
        )
    return rows
