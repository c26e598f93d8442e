"""Fit and evaluate: Adam without decay, cross-entropy, best checkpoint by lowest
validation loss, exact resume after a kill (METHOD.md sections 4-7).

Data are held in memory as tensors: the whole feature set becomes one float32
tensor (n, 1, N, N) on the training device, and each batch is an index into it
(no per-sample Dataset, no DataLoader, no decoding in the loop). Shuffling draws
from a ``torch.Generator`` seeded with ``TrainConfig.seed``; ``fit`` also seeds
torch's global generator (dropout masks) with it when it starts afresh.

Batches: the last partial batch of an epoch is kept, except a lone sample
(batch-norm cannot train on a batch of one): that sample sits out the epoch.

Resume: with ``checkpoint=PATH``, ``fit`` writes model, optimizer, RNG states,
history and best state to PATH (atomically) after every ``checkpoint_every``
epochs, and a fit started with the same arguments after a kill continues from the
last saved epoch; on CPU the end result equals an uninterrupted run bit for bit.
A fit asked for more epochs than a finished checkpoint holds continues it.

Frozen modules (transfer learning): names listed in ``model.frozen_modules`` are
put back into eval mode after every ``model.train()``, so a frozen batch-norm uses
its running statistics and a frozen dropout is off.

``torch.set_num_threads`` is left to the caller.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ser.study import metrics
from ser.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from ser.study import stopping
    from ser.data.dataset import FeatureSet  # only read as .images / .labels: no librosa import needed here

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
SELECTIONS: tuple[str, ...] = ("loss", "ua")
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig(Settings):
    """How to train: the study's defaults are batch 32, LR 6e-5, at most 300 epochs.

    ``eval_every``: validate every k epochs (and at the last epoch); ``device``:
    "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N";
    ``precision``: "fp32", or "bf16" autocast on CUDA (ignored on CPU);
    ``schedule``: "constant" LR (the study), or "cosine" from ``lr`` down to zero over
    ``epochs`` (set per epoch from the epoch number, so a resumed fit follows it
    exactly); ``weight_decay``: decoupled (AdamW) weight decay, 0 = plain Adam (the study);
    ``logit_adjust``: tau of logit adjustment (Menon et al., ICLR 2021), 0 = off (the
    study): the training loss sees the logits plus tau x log(each class's share of the
    training rows), so the plain logits the model serves aim at the mean per-class recall
    (UA) instead of accuracy, whatever the class balance of the training corpus. Nothing
    changes at inference, and a balanced corpus trains exactly as without it. Off in every
    recipe: on EmoDB's unseen speakers it did not raise UA (docs/QUALITY.md).
    """

    epochs: int = 300
    batch_size: int = 32
    lr: float = 6e-5
    seed: int = 0
    eval_every: int = 1
    device: str = "auto"
    precision: str = "fp32"
    schedule: str = "constant"
    weight_decay: float = 0.0
    logit_adjust: float = 0.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "weight_decay", float(self.weight_decay))
        set_(self, "logit_adjust", float(self.logit_adjust))
        if self.logit_adjust < 0:
            raise ValueError(f"logit_adjust must be >= 0, got {self.logit_adjust}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("epochs", "batch_size", "seed", "eval_every"):
            set_(self, name, int(round(float(getattr(self, name)))))
        set_(self, "lr", float(self.lr))
        set_(self, "device", str(self.device))
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be at least 1, got {self.eval_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True)
class EpochRecord:
    """One epoch; accuracy (WA), macro F1 and UA are fractions, val fields NaN when not evaluated."""

    epoch: int
    train_loss: float
    val_loss: float = math.nan
    accuracy: float = math.nan
    macro_f1: float = math.nan
    ua: float = math.nan

    @property
    def evaluated(self) -> bool:
        return not math.isnan(self.val_loss)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    best_val_loss: float
    best_state: dict[str, torch.Tensor]
    stopped_by: str | None
    abandoned: bool
    seconds: float

    @property
    def epochs_run(self) -> int:
        return self.history[-1].epoch if self.history else 0

    @property
    def best(self) -> EpochRecord | None:
        return next((r for r in self.history if r.epoch == self.best_epoch), None)

    def summary(self) -> dict[str, Any]:
        best = self.best
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "best_accuracy": best.accuracy if best else math.nan,
            "best_macro_f1": best.macro_f1 if best else math.nan,
            "stopped_by": self.stopped_by,
            "abandoned": self.abandoned,
            "seconds": self.seconds,
        }


@dataclass
class Evaluation:
    """Scores of a model on a set of rows; ``accuracy`` is WA, ``ua`` the mean per-class recall."""

    loss: float
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    probabilities: np.ndarray
    labels: tuple[str, ...] = ()
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ua: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no probabilities)."""
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "ua": self.ua,
            "macro_f1": self.macro_f1,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion,
            "labels": list(self.labels),
            "n": int(self.probabilities.shape[0]),
        }


# --------------------------------------------------------------------------- helpers


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; asking for cuda without one is an error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (call before building a model for reproducible init)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def as_tensors(fs: FeatureSet, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The whole feature set as (images (n, 1, N, N), labels int64) on ``device``; images
    float32, or float16 where the set holds them so (encoder features: read back as
    float32 batch by batch, see ``_predict`` and ``fit``)."""
    dtype = np.float16 if fs.images.dtype == np.float16 else np.float32
    images = torch.from_numpy(np.ascontiguousarray(fs.images, dtype=dtype)).unsqueeze(1)
    labels = torch.from_numpy(np.ascontiguousarray(fs.labels, dtype=np.int64))
    return images.to(device), labels.to(device)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, then frozen modules (``model.frozen_modules``) back to eval."""
    model.train()
    for name in getattr(model, "frozen_modules", ()) or ():
        getattr(model, name).eval()


def _autocast(device: torch.device, precision: str):
    enabled = precision == "bf16" and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, precision: str = "fp32",
             lengths: torch.Tensor | None = None) -> tuple[float, np.ndarray]:
    """(mean cross-entropy, logits as float32 numpy) over tensors already on the model's device.
    ``lengths``: valid frames per row, for networks that take them (the plus network)."""
    was_training = model.training
    model.eval()
    device = images.device
    total, chunks = 0.0, []
    with_lengths = getattr(model, "takes_lengths", False)
    try:
        for i in range(0, images.shape[0], batch_size):
            with _autocast(device, precision):
                batch = images[i : i + batch_size].float()
                if with_lengths:
                    logits = model(batch, None if lengths is None else lengths[i : i + batch_size]).float()
                else:
                    logits = model(batch).float()
            total += float(F.cross_entropy(logits, labels[i : i + batch_size], reduction="sum"))
            chunks.append(logits.cpu())
    finally:
        model.train(was_training)
    n = max(1, images.shape[0])
    logits = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    return total / n, logits


def _quick_eval(model, images, labels, batch_size, precision, lengths=None) -> tuple[float, metrics.Scores]:
    loss, logits = _predict(model, images, labels, batch_size, precision, lengths)
    return loss, metrics.scores(labels.cpu().numpy(), logits.argmax(1))


def evaluate(model: nn.Module, fs: FeatureSet, batch_size: int = 256, device: str | torch.device | None = None, precision: str = "fp32") -> Evaluation:
    """Loss, accuracy, macro F1, per-class scores, confusion matrix and probabilities
    of ``model`` on ``fs`` (``device`` None: wherever the model is)."""
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device)
    images, labels = as_tensors(fs, device)
    loss, logits = _predict(model, images, labels, batch_size, precision, torch.from_numpy(fs.length))
    n_classes = int(getattr(getattr(model, "spec", None), "n_classes", 0)) or (logits.shape[1] if logits.ndim == 2 else len(fs.label_names))
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy() if logits.size else np.zeros((0, n_classes), np.float32)
    y = fs.labels.astype(np.int64)
    pred = probs.argmax(1).astype(np.int64) if probs.size else np.zeros(0, np.int64)
    names = tuple(fs.label_names) if len(fs.label_names) == n_classes else tuple(str(i) for i in range(n_classes))
    sc = metrics.scores(y, pred)
    return Evaluation(
        loss=float(loss) if y.size else math.nan,
        accuracy=sc.wa,
        macro_f1=sc.macro_f1,
        ua=sc.ua,
        per_class=metrics.per_class(y, pred, names),
        confusion=metrics.confusion(y, pred, n_classes).tolist(),
        probabilities=probs.astype(np.float32),
        labels=names,
        predictions=pred,
    )


# --------------------------------------------------------------------------- checkpoint


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


_RESUME_KEYS = ("batch_size", "lr", "seed", "eval_every", "precision", "schedule", "weight_decay", "logit_adjust")


def _load_checkpoint(path: Path, cfg: TrainConfig, n_train: int, n_val: int) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say so, do not guess
        raise ValueError(f"{path}: cannot read training checkpoint ({exc}); delete it to start afresh") from None
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unknown checkpoint version {ckpt.get('version')}")
    old = ckpt["config"]
    defaults = TrainConfig().to_dict()  # checkpoints from before a field existed hold its default
    diff = [k for k in _RESUME_KEYS if old.get(k, defaults[k]) != cfg.to_dict()[k]]
    if diff or (ckpt["n_train"], ckpt["n_val"]) != (n_train, n_val):
        what = ", ".join(f"{k} {old.get(k)!r} -> {cfg.to_dict()[k]!r}" for k in diff) or "different data sizes"
        raise ValueError(f"{path} belongs to another training run ({what}); delete it or choose another checkpoint path")
    return ckpt


# --------------------------------------------------------------------------- fit


def class_log_prior(labels: torch.Tensor, n_classes: int, tau: float) -> torch.Tensor | float:
    """tau x log(share of each class among ``labels``), added to the logits in the
    training loss (logit adjustment); 0.0 when tau is 0. A class with no training row
    counts as one row, so its offset stays finite."""
    if tau == 0:
        return 0.0
    counts = torch.bincount(labels.long(), minlength=n_classes).float().clamp_min(1.0)
    return tau * torch.log(counts / counts.sum())


#: (the set's images, the batch's labels and valid frames, generator, the batch's row indices) -> (inputs, target distributions).
Augmenter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _Diverged:
    """fit's own stop: the training loss is not finite; the vector is abandoned."""

    rule: str = "diverged"
    scope: str = "vector"


def fit(
    model: nn.Module,
    train: FeatureSet,
    val: FeatureSet | None,
    cfg: TrainConfig,
    *,
    stopper: "stopping.FoldStopper | Callable[[list[EpochRecord]], Any] | None" = None,
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
    checkpoint_every: int = 1,
    eval_batch_size: int = 256,
    desc: str = "train",
    augment: "Augmenter | None" = None,
    select: str = "loss",
) -> FitResult:
    """Train ``model`` on ``train`` for ``cfg.epochs`` epochs, validating on ``val``.

    ``stopper`` is called with the history after every epoch and may return a
    decision with ``rule`` and ``scope`` ("vector" abandons, "fold" stops): see
    :mod:`ser.study.stopping`. A non-finite training loss stops the fit by itself
    (``stopped_by="diverged"``, ``abandoned=True``). Returns the history and the best
    state (lowest validation loss; the last state when there is no validation set).
    The model is left with the weights of the last epoch run; load ``best_state``
    for the best.

    ``select``: what makes an epoch the best, the lowest validation ``loss`` (the
    study's rule) or the highest validation ``ua`` (ties: lower loss). With
    augmentation and label smoothing the validation loss can bottom out in the first
    epochs while the accuracy still climbs, so loss picks checkpoints early.

    ``augment`` (the plus recipe, :mod:`ser.study.plus`) turns each batch of rows into
    network inputs and target distributions (crops, SpecAugment, mixup, label
    smoothing), drawing from the shuffling generator so a resumed fit is exact. It gets
    the whole set as it is held (float16 for encoder features) and the batch's row
    indices, and returns float32 inputs: copying and widening only the crops costs a
    fraction of copying the padded rows.
    """
    device = resolve_device(cfg.device)
    if len(train) == 0:
        raise ValueError("the training set is empty")
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    model.to(device)
    images, labels = as_tensors(train, device)
    lengths = torch.from_numpy(train.length).to(device)
    has_val = val is not None and len(val) > 0
    val_images, val_labels = as_tensors(val, device) if has_val else (None, None)
    val_lengths = torch.from_numpy(val.length) if has_val else None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("every parameter is frozen: nothing to train")
    if cfg.weight_decay > 0:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    else:
        optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=device.type == "cuda")
    shuffle = torch.Generator().manual_seed(cfg.seed)
    n_classes = int(getattr(getattr(model, "spec", None), "n_classes", 0)) or len(train.label_names)
    adjust = class_log_prior(labels, n_classes, cfg.logit_adjust)

    history: list[EpochRecord] = []
    best_epoch, best_val, best_state = 0, math.inf, None
    best_key: tuple[float, ...] | None = None
    stopped_by, abandoned, seconds, done = None, False, 0.0, False
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    n_val = len(val) if has_val else 0
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = _load_checkpoint(ckpt_path, cfg, len(train), n_val)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_torch"])
        shuffle.set_state(ckpt["rng_shuffle"])
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
        history = [EpochRecord(**r) for r in ckpt["history"]]
        best_epoch, best_val, best_state = ckpt["best_epoch"], ckpt["best_val_loss"], ckpt["best_state"]
        best_key = tuple(ckpt["best_key"]) if ckpt.get("best_key") is not None else (None if best_state is None else (best_val,))
        stopped_by, abandoned, seconds = ckpt["stopped_by"], ckpt["abandoned"], ckpt["seconds"]
        done = stopped_by is not None
    else:
        torch.manual_seed(cfg.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed)
    start = history[-1].epoch + 1 if history else 1

    def save(epoch: int) -> None:
        if ckpt_path is None:
            return
        _atomic_save(
            {
                "version": CHECKPOINT_VERSION,
                "config": cfg.to_dict(),
                "n_train": len(train),
                "n_val": n_val,
                "epoch": epoch,
                "model": _cpu_state(model),
                "optimizer": optimizer.state_dict(),
                "rng_torch": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "rng_shuffle": shuffle.get_state(),
                "history": [r.to_dict() for r in history],
                "best_epoch": best_epoch,
                "best_val_loss": best_val,
                "best_key": list(best_key) if best_key is not None else None,
                "best_state": best_state,
                "stopped_by": stopped_by,
                "abandoned": abandoned,
                "seconds": seconds,
            },
            ckpt_path,
        )

    n = images.shape[0]
    bar = tqdm(total=cfg.epochs, initial=min(start - 1, cfg.epochs), desc=desc, unit="epoch", disable=not progress or done, leave=False, dynamic_ncols=True)
    for epoch in range(start, cfg.epochs + 1) if not done else ():
        t0 = time.perf_counter()
        if cfg.schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
        set_train_mode(model)
        order = torch.randperm(n, generator=shuffle)
        if n > 1 and n % cfg.batch_size == 1:
            order = order[:-1]  # batch-norm cannot train on a batch of one
        order = order.to(device)
        total = torch.zeros((), device=device)
        for i in range(0, order.shape[0], cfg.batch_size):
            batch = order[i : i + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            if augment is None:
                with _autocast(device, cfg.precision):
                    logits = model(images[batch].float())
                loss = F.cross_entropy(logits.float() + adjust, labels[batch])
            else:
                inputs, targets = augment(images, labels[batch], lengths[batch], shuffle, batch)  # crops straight from the set
                with _autocast(device, cfg.precision):
                    logits = model(inputs)
                loss = F.cross_entropy(logits.float() + adjust, targets)
            loss.backward()
            optimizer.step()
            total += loss.detach() * batch.shape[0]
        train_loss = float(total) / max(1, order.shape[0])
        record = EpochRecord(epoch, train_loss)
        if has_val and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            vloss, sc = _quick_eval(model, val_images, val_labels, eval_batch_size, cfg.precision, val_lengths)
            record = EpochRecord(epoch, train_loss, vloss, sc.wa, sc.macro_f1, sc.ua)
            key = (vloss,) if select == "loss" else (-sc.ua, vloss)
            if best_key is None or key < best_key:
                best_epoch, best_val, best_key, best_state = epoch, vloss, key, _cpu_state(model)
        history.append(record)
        if not math.isfinite(train_loss):  # diverged (an LR too high): nothing more to learn
            decision = _Diverged()
        else:
            decision = stopper(history) if stopper is not None else None
        if decision is not None:
            stopped_by, abandoned = decision.rule, decision.scope == "vector"
        seconds += time.perf_counter() - t0
        if ckpt_path is not None and (epoch % max(1, checkpoint_every) == 0 or epoch == cfg.epochs or decision is not None):
            save(epoch)
        if on_epoch is not None:
            on_epoch(record)
        postfix = {"loss": f"{train_loss:.3f}"}
        if record.evaluated:
            postfix.update(val=f"{record.val_loss:.3f}", f1=f"{record.macro_f1:.3f}")
        bar.set_postfix(postfix, refresh=False)
        bar.update()
        if decision is not None:
            break
    bar.close()
    if best_state is None:  # no validation: the last state is the result
        best_state = _cpu_state(model)
        best_epoch = history[-1].epoch if history else 0
        best_val = math.nan
    return FitResult(history, best_epoch, float(best_val), best_state, stopped_by, abandoned, seconds)


# --------------------------------------------------------------------------- final training


def improvements(history: Sequence[EpochRecord]) -> list[EpochRecord]:
    """The evaluated epochs at which the validation (test) loss reached a new low:
    the study's Table 5 (epoch, test loss, accuracy, F1 at each improvement)."""
    best, rows = math.inf, []
    for rec in history:
        if rec.evaluated and rec.val_loss < best:
            best = rec.val_loss
            rows.append(rec)
    return rows


@dataclass
class FinalResult:
    fit: FitResult
    improvements: list[EpochRecord]
    evaluation: Evaluation


def final_train(
    model: nn.Module,
    train: FeatureSet,
    test: FeatureSet,
    cfg: TrainConfig,
    *,
    val: FeatureSet | None = None,
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
    checkpoint_every: int = 1,
    desc: str = "final",
) -> FinalResult:
    """Final training (METHOD.md section 7): train on the whole training split without
    early stopping and keep the checkpoint with the lowest loss on ``val``, then score
    it on ``test``. With ``val=None`` the test set chooses the checkpoint, the study's
    own rule: that score is optimistic, and the callers say so. The model ends with
    the chosen weights; the evaluation is of those weights on ``test``."""
    chooser = val if val is not None else test
    result = fit(model, train, chooser, cfg, checkpoint=checkpoint, on_epoch=on_epoch, progress=progress, checkpoint_every=checkpoint_every, desc=desc)
    model.load_state_dict(result.best_state)
    evaluation = evaluate(model, test, precision=cfg.precision)
    return FinalResult(result, improvements(result.history), evaluation)
