"""The ``plus`` recipe's training-time augmentation, every element a switch.

A batch of rows (log-mel arrays or encoder states padded to a common width, with their
valid frame counts; in training, the whole set and the batch's row indices) becomes
float32 network inputs and target distributions, each step done for the whole batch:

- ``crop``: a random window of ``window`` frames inside each row's valid frames
  (off: the first window), so the network learns from every part of an utterance
  and never from padding;
- ``speed``: speed perturbation in the feature domain: the crop is resampled by a
  random factor in [1 - speed, 1 + speed] along time and the inverse along the mel
  axis (a faster voice is shorter and higher), a cheap stand-in for resampling the
  waveform, which would need features recomputed every epoch;
- ``vtlp``: vocal tract length perturbation (Jaitly and Hinton 2013): the crop's mel
  axis alone is stretched by a random factor in [1 - vtlp, 1 + vtlp], time untouched,
  so one training voice is also heard as shorter and longer vocal tracts speaking at the
  same tempo (0 turns it off; it joins the speed warp in the same resampling);
- ``specaugment``: ``time_masks`` time masks of up to ``time_width`` frames and
  ``freq_masks`` frequency masks of up to ``freq_width`` bands (Park et al. 2019);
- ``mixup``: pairs of inputs and their targets blended with a Beta(alpha, alpha)
  weight (Zhang et al. 2018); 0 turns it off;
- ``label_smoothing``: the target puts 1 - eps on the true class.

Every draw comes from the generator the training loop shuffles with, so a resumed
fit draws the same crops and masks as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ser.settings import Settings


@dataclass(frozen=True)
class PlusConfig(Settings):
    """Switches of the plus recipe's augmentation (see the module docstring)."""

    crop: bool = True
    speed: float = 0.1
    vtlp: float = 0.0
    specaugment: bool = True
    time_masks: int = 2
    time_width: int = 20
    freq_masks: int = 2
    freq_width: int = 8
    mixup: float = 0.2
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.speed < 0.5 or not 0.0 <= self.vtlp < 0.5:
            raise ValueError(f"speed and vtlp must be in [0, 0.5), got {self.speed} and {self.vtlp}")
        if self.mixup < 0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("mixup must be >= 0 and label_smoothing in [0, 1)")
        if min(self.time_masks, self.time_width, self.freq_masks, self.freq_width) < 0:
            raise ValueError("mask counts and widths must be >= 0")


def _uniform(gen: torch.Generator, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=gen)


def crops(images: torch.Tensor, lengths: torch.Tensor, window: int, gen: torch.Generator, random: bool = True,
          rows: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, M, T) padded rows -> (B, 1, M, window) float32 crops of each row's valid
    frames (zero-padded on the right where a row is shorter than the window). With
    ``rows``, ``images`` is a whole set (N, 1, M, T) and ``rows`` the B it crops from.

    Each crop is copied straight out of the set into a float32 batch, gathered and
    widened in one pass: rows held in float16 (encoder features) are never copied or
    widened whole, and one copy per row beat a single strided gather plus a widening
    pass by 2x on the CPU (benchmarks/RESULTS.md)."""
    n = images.shape[0] if rows is None else int(rows.shape[0])
    rows = list(range(n)) if rows is None else rows.tolist()
    lengths = lengths.cpu().long()
    room = (lengths - window).clamp_min(0)
    starts = (_uniform(gen, n) * (room + 1).float()).long().clamp(max=room) if random else torch.zeros_like(room)
    out = torch.empty(n, 1, images.shape[-2], window, dtype=torch.float32, device=images.device)
    for i, (row, start, length) in enumerate(zip(rows, starts.tolist(), lengths.tolist())):
        valid = min(window, length)
        out[i, :, :, :valid].copy_(images[row, :, :, start : start + valid])
        if valid < window:
            out[i, :, :, valid:].zero_()
    return out


def speed_perturb(x: torch.Tensor, amount: float, gen: torch.Generator, vtlp: float = 0.0) -> torch.Tensor:
    """Each (1, M, W) crop resampled by its own random factor in [1 - amount, 1 + amount]
    (see :func:`speed_warp`); with ``vtlp``, its mel axis then by a second factor in
    [1 - vtlp, 1 + vtlp] (drawn after all the speed factors), in the same resampling."""
    speed = 1.0 + (2 * _uniform(gen, x.shape[0]).double() - 1) * amount
    tract = 1.0 + (2 * _uniform(gen, x.shape[0]).double() - 1) * vtlp if vtlp > 0 else None
    return speed_warp(x, speed, None if tract is None else speed * tract)


def speed_warp(x: torch.Tensor, factor: torch.Tensor, mel: torch.Tensor | None = None) -> torch.Tensor:
    """Resample each (1, M, W) crop by its ``factor`` along time and the inverse along
    mel (a faster voice is shorter and higher), keeping the first W frames and M bands
    (zeros where the resampled crop is shorter). What ``F.interpolate(size=(round(M x f),
    round(W / f)))`` does to each row, done for the whole batch by one ``grid_sample``
    (edges clamped as interpolate clamps them). Training draws the factors
    (:func:`speed_perturb`); the plus network's inference can see each window at fixed
    factors too (``PlusSpec.speeds``). ``mel``, when given, is the mel axis's own factor
    (vocal tract length perturbation: :func:`speed_perturb`)."""
    n, _, m, w = x.shape
    factor = factor.double().cpu().expand(n)
    mel = factor if mel is None else mel.double().cpu().expand(n)
    t_len = torch.round(w / factor).clamp_min(2)
    f_len = torch.round(m * mel).clamp_min(2)

    def axis(size: int, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # output position j reads the source at (j + 0.5) / length in [-1, 1] units
        j = torch.arange(size, dtype=torch.float64)
        return ((j + 0.5) / length[:, None] * 2 - 1).float(), j < length[:, None]

    gx, keep_t = axis(w, t_len)
    gy, keep_f = axis(m, f_len)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1).to(x.device, x.dtype)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    keep = (keep_f[:, :, None] & keep_t[:, None, :]).to(x.device)
    return y * keep[:, None]


def _bands(u: torch.Tensor, widest: int, size: int) -> torch.Tensor:
    """(B, 2k) draws (a width then a start for each of k masks) -> (B, size) True
    where any of a row's k masks falls: widths 0..widest, starts anywhere they fit."""
    width = (u[:, 0::2] * (widest + 1)).long()
    start = (u[:, 1::2] * (size - width).clamp_min(1)).long()
    pos = torch.arange(size)[None, None, :]
    return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(dim=1)


def spec_augment(x: torch.Tensor, cfg: PlusConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero (the utterance mean, after standardisation) random time and mel bands, all
    rows at once: each row draws its masks' widths and starts in turn (time masks
    first), then one fill applies them (``x`` itself comes back when there are no masks)."""
    n, _, m, w = x.shape
    k_t, k_f = 2 * cfg.time_masks, 2 * cfg.freq_masks
    if not k_t + k_f:
        return x
    u = _uniform(gen, n * (k_t + k_f)).double().view(n, k_t + k_f)
    masks = []  # small (B, 1, 1, W) and (B, 1, M, 1) masks, broadcast by the fill
    if k_t:
        masks.append(_bands(u[:, :k_t], cfg.time_width, w)[:, None, None, :].to(x.device))
    if k_f:
        masks.append(_bands(u[:, k_t:], cfg.freq_width, m)[:, None, :, None].to(x.device))
    return x.masked_fill(masks[0] | masks[1] if len(masks) == 2 else masks[0], 0.0)


def augmenter(cfg: PlusConfig, window: int, n_classes: int):
    """The ``augment`` callable :func:`ser.study.training.fit` takes for the plus recipe."""

    def make(images: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator,
             rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = crops(images, lengths, window, gen, random=cfg.crop, rows=rows)
        if cfg.speed > 0 or cfg.vtlp > 0:
            x = speed_perturb(x, cfg.speed, gen, vtlp=cfg.vtlp)
        if cfg.specaugment:
            x = spec_augment(x, cfg, gen)
        eps = cfg.label_smoothing
        target = F.one_hot(labels, n_classes).to(x.dtype) * (1 - eps) + eps / n_classes
        if cfg.mixup > 0 and x.shape[0] > 1:
            lam = _beta(cfg.mixup, gen)
            perm = torch.randperm(x.shape[0], generator=gen)
            x = torch.lerp(x[perm], x, lam)  # lam x + (1 - lam) x[perm] in one pass
            target = torch.lerp(target[perm], target, lam)
        return x, target

    return make


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw that depends only on ``gen`` (torch's Beta sampler
    takes no generator): numpy's Beta, seeded by a draw from ``gen``."""
    import numpy as np

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
