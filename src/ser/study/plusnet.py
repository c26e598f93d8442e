"""The ``plus`` recipe's network: a small CNN over log-mel frames that pools over time.

The study's CNNs see a whole utterance squeezed into N x N pixels, so a long and a
short sentence look alike only after being stretched differently, and the fully
connected layers (most of their 55 M parameters) learn positions in that picture.
This network sees log-mel frames at a fixed 10 ms hop: four conv blocks, an average
over frequency (``frequency="flatten"`` keeps the remaining bands side by side instead,
so the embedding says where in the spectrum a pattern sits), then statistics pooling over time (the mean and standard deviation of
every channel; ``pooling="attention"`` weights the frames by a learned score, which
scored lower on unseen voices: docs/QUALITY.md), so its answer does not depend on where
in the clip an emotion is voiced, and it takes any length.

Training shows it random crops of ``window`` frames (:mod:`ser.study.plus` makes them);
in eval mode it cuts a longer input into overlapping windows of that length, hop
``hop``, and averages their logits, so the serving handler, ``ser predict`` and
``ser predict --timeline`` get exactly what evaluation measured by calling it. With
``speeds`` it also sees every window resampled by each of those factors, as the
training speed perturbation resamples a crop, and averages over them all: a voice
faster or slower than the training voices meets copies nearer to what was trained on,
at the price of one forward pass per factor (docs/QUALITY.md, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ser.settings import Settings
from ser.study.plus import speed_warp

POOLINGS: tuple[str, ...] = ("attention", "mean")
FREQUENCY: tuple[str, ...] = ("mean", "flatten")


@dataclass(frozen=True)
class PlusSpec(Settings):
    """Architecture of :class:`PlusNet`; ``in_size`` is the number of mel bands."""

    cnn: str = "plus"
    in_size: int = 64
    n_classes: int = 7
    channels: tuple[int, ...] = (32, 64, 128, 256)
    dropout: float = 0.3
    pooling: str = "mean"
    frequency: str = "mean"  #: after the conv blocks: "mean" over the remaining mel bands, or "flatten" (channels x bands per frame)
    window: int = 200  #: frames per crop / inference window (2 s at a 10 ms hop)
    hop: int = 100  #: frames between inference windows (50% overlap)
    #: speed factors each inference window is also seen at (the training speed perturbation
    #: at fixed factors), logits averaged over windows and factors; (1.0,): as it is
    speeds: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "in_size", int(self.in_size))
        set_(self, "n_classes", int(self.n_classes))
        set_(self, "channels", tuple(int(c) for c in self.channels))
        set_(self, "window", int(self.window))
        set_(self, "hop", int(self.hop))
        set_(self, "dropout", float(self.dropout))
        speeds = self.speeds if isinstance(self.speeds, (list, tuple)) else (self.speeds,)  # a lone "--set model.speeds=1"
        set_(self, "speeds", tuple(float(f) for f in speeds))
        if self.cnn != "plus":
            raise ValueError(f"PlusSpec is for cnn 'plus', got {self.cnn!r}")
        if self.n_classes < 2 or not self.channels or min(self.channels) < 1:
            raise ValueError("n_classes must be at least 2 and channels positive")
        if self.in_size < 2 ** len(self.channels):
            raise ValueError(f"{self.in_size} mel bands are too few for {len(self.channels)} pooling blocks")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.frequency not in FREQUENCY:
            raise ValueError(f"frequency must be one of {FREQUENCY}, got {self.frequency!r}")
        if not 0 < self.hop <= self.window or self.window < 2 ** len(self.channels):
            raise ValueError("need 0 < hop <= window, and a window long enough for every pooling block")
        if not self.speeds or not all(0.5 <= f <= 1.5 for f in self.speeds):
            raise ValueError(f"speeds must be one or more factors in [0.5, 1.5], got {self.speeds}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class PlusNet(nn.Module):
    """(batch, 1, mel bands, frames) -> logits; any number of frames."""

    takes_lengths = True

    def __init__(self, spec: PlusSpec) -> None:
        super().__init__()
        self.spec = spec
        blocks, cin = [], 1
        for c in spec.channels:
            blocks += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*blocks)
        if spec.frequency == "flatten":
            cin *= spec.in_size >> len(spec.channels)  # the mel bands the max-pools leave
        self.attention = nn.Conv1d(cin, 1, 1) if spec.pooling == "attention" else None
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(2 * cin, spec.n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frames -> one vector per input: the mean and deviation over time of every channel (x band with flatten)."""
        h = self.features(x)  # (B, C, F', T')
        h = h.flatten(1, 2) if self.spec.frequency == "flatten" else h.mean(dim=2)  # (B, C or C x F', T')
        if self.attention is not None:
            w = torch.softmax(self.attention(h), dim=-1)
        else:
            w = torch.full_like(h[:, :1], 1.0 / h.shape[-1])
        return weighted_stats(h, w, dim=-1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            return self.classify(x)
        return window_logits(self.classify, x, lengths, self.spec.window, self.spec.hop, self.spec.speeds)


def weighted_stats(h: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """Statistics pooling: the mean and standard deviation of ``h`` over ``dim`` under
    weights ``w`` (summing to 1 along ``dim``), side by side: (batch, 2 x features)."""
    mean = (h * w).sum(dim, keepdim=True)
    std = ((h - mean).pow(2) * w).sum(dim).clamp_min(1e-6).sqrt()
    return torch.cat([mean.squeeze(dim), std], dim=1)


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Starts of the inference windows over ``length`` frames: every ``hop`` frames,
    the last one flush with the end; one window when the input is not longer."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_logits(classify, x: torch.Tensor, lengths: torch.Tensor | None, window: int, hop: int,
                  speeds: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """Mean logits over the overlapping windows of each row's valid frames (a row
    shorter than a window is zero-padded to one), each window seen at every factor of
    ``speeds`` (:func:`ser.study.plus.speed_warp`, as training perturbs a crop)."""
    n, width = x.shape[0], x.shape[-1]
    lengths_list = [width] * n if lengths is None else [max(1, min(width, int(v))) for v in lengths]
    crops, owner = [], []
    for i, length in enumerate(lengths_list):
        for start in window_starts(length, window, hop):
            crop = x[i, :, :, start : min(start + window, length)]
            if crop.shape[-1] < window:
                crop = F.pad(crop, (0, window - crop.shape[-1]))
            crops.append(crop)
            owner.append(i)
    batch = torch.stack(crops)
    # one classify call per factor: only one copy's activations are in memory at a time
    logits = torch.cat([classify(batch if f == 1.0 else speed_warp(batch, torch.tensor(f))) for f in speeds])
    index = torch.tensor(owner * len(speeds), device=logits.device)
    total = torch.zeros(n, logits.shape[1], device=logits.device, dtype=logits.dtype).index_add_(0, index, logits)
    counts = torch.bincount(index, minlength=n).to(logits.dtype).unsqueeze(1)
    return total / counts


def batch_frames(images: "list[np.ndarray]") -> tuple[torch.Tensor, torch.Tensor]:
    """(M, T_i) arrays of any widths -> a (n, 1, M, max T) batch padded on the right and
    the valid widths: what the network takes from a server's batch of requests."""
    width = max(image.shape[-1] for image in images)
    batch = torch.zeros(len(images), 1, images[0].shape[0], width)
    for i, image in enumerate(images):
        batch[i, 0, :, : image.shape[-1]] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return batch, torch.tensor([image.shape[-1] for image in images])
