"""The ``plus`` recipe's training-time augmentation, every element a switch.

A batch of rows (log-mel arrays padded to a common width, with their valid frame
counts) becomes network inputs and target distributions:

- ``crop``: a random window of ``window`` frames inside each row's valid frames
  (off: the first window), so the network learns from every part of an utterance
  and never from padding;
- ``speed``: speed perturbation in the feature domain: the crop is resampled by a
  random factor in [1 - speed, 1 + speed] along time and the inverse along the mel
  axis (a faster voice is shorter and higher), a cheap stand-in for resampling the
  waveform, which would need features recomputed every epoch;
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
    specaugment: bool = True
    time_masks: int = 2
    time_width: int = 20
    freq_masks: int = 2
    freq_width: int = 8
    mixup: float = 0.2
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.speed < 0.5:
            raise ValueError(f"speed must be in [0, 0.5), got {self.speed}")
        if self.mixup < 0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("mixup must be >= 0 and label_smoothing in [0, 1)")
        if min(self.time_masks, self.time_width, self.freq_masks, self.freq_width) < 0:
            raise ValueError("mask counts and widths must be >= 0")


def _uniform(gen: torch.Generator, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=gen)


def crops(images: torch.Tensor, lengths: torch.Tensor, window: int, gen: torch.Generator, random: bool = True) -> torch.Tensor:
    """(B, 1, M, T) padded rows -> (B, 1, M, window) crops of each row's valid frames
    (zero-padded on the right where a row is shorter than the window)."""
    out = torch.zeros(images.shape[0], 1, images.shape[-2], window, dtype=images.dtype, device=images.device)
    room = (lengths.cpu() - window).clamp_min(0)
    starts = (_uniform(gen, images.shape[0]) * (room + 1).float()).long().clamp(max=room) if random else torch.zeros_like(room)
    for i in range(images.shape[0]):
        start, valid = int(starts[i]), int(min(window, int(lengths[i])))
        out[i, 0, :, :valid] = images[i, 0, :, start : start + valid]
    return out


def speed_perturb(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Resample each (1, M, W) crop by a random factor along time and its inverse along mel."""
    out = torch.empty_like(x)
    _, _, m, w = x.shape
    for i in range(x.shape[0]):
        factor = 1.0 + (2 * float(_uniform(gen)) - 1) * amount
        t_len, f_len = max(2, round(w / factor)), max(2, round(m * factor))
        y = F.interpolate(x[i : i + 1], size=(f_len, t_len), mode="bilinear", align_corners=False)
        y = y[..., :m, :w]
        out[i] = F.pad(y, (0, w - y.shape[-1], 0, m - y.shape[-2]))[0]
    return out


def spec_augment(x: torch.Tensor, cfg: PlusConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero (the utterance mean, after standardisation) random time and mel bands."""
    x = x.clone()
    _, _, m, w = x.shape
    for i in range(x.shape[0]):
        for _ in range(cfg.time_masks):
            width = int(_uniform(gen) * (cfg.time_width + 1))
            start = int(_uniform(gen) * max(1, w - width))
            x[i, :, :, start : start + width] = 0.0
        for _ in range(cfg.freq_masks):
            width = int(_uniform(gen) * (cfg.freq_width + 1))
            start = int(_uniform(gen) * max(1, m - width))
            x[i, :, start : start + width, :] = 0.0
    return x


def augmenter(cfg: PlusConfig, window: int, n_classes: int):
    """The ``augment`` callable :func:`ser.study.training.fit` takes for the plus recipe."""

    def make(images: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = crops(images, lengths, window, gen, random=cfg.crop)
        if cfg.speed > 0:
            x = speed_perturb(x, cfg.speed, gen)
        if cfg.specaugment:
            x = spec_augment(x, cfg, gen)
        eps = cfg.label_smoothing
        target = F.one_hot(labels, n_classes).to(x.dtype) * (1 - eps) + eps / n_classes
        if cfg.mixup > 0 and x.shape[0] > 1:
            lam = _beta(cfg.mixup, gen)
            perm = torch.randperm(x.shape[0], generator=gen)
            x = lam * x + (1 - lam) * x[perm]
            target = lam * target + (1 - lam) * target[perm]
        return x, target

    return make


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw that depends only on ``gen`` (torch's Beta sampler
    takes no generator): numpy's Beta, seeded by a draw from ``gen``."""
    import numpy as np

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
