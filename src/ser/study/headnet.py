"""The ``whisper`` recipe's network: a small head over frozen encoder embeddings.

The encoder (:mod:`ser.data.encoder`) already turns speech into 20 ms embeddings that
separate voices, words and manner of speaking; with a few hundred labelled clips the
head should only learn which directions of that space carry emotion and how to weigh
the frames. So it is small: a layer norm and a projection per frame, attention
statistics pooling over the frames (weighted mean and deviation), dropout, and one
linear layer. About 0.14 M parameters for a 512-wide encoder.

Padding is recognised by itself: a frame of all zeros is never an encoder output,
so rows padded to a common width (a feature set, a server's batch) and frames zeroed
by time masking in training are left out of the pooling, with or without ``lengths``.
It takes any number of frames; there is no windowing at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ser.study.plusnet import POOLINGS, weighted_stats
from ser.settings import Settings


@dataclass(frozen=True)
class HeadSpec(Settings):
    """Architecture of :class:`HeadNet`; ``in_size`` is the encoder's width."""

    cnn: str = "head"
    in_size: int = 512
    n_classes: int = 7
    hidden: int = 256
    dropout: float = 0.3
    pooling: str = "attention"
    window: int = 500  #: frames per random training crop (10 s at 20 ms); inference takes the whole utterance

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("in_size", "n_classes", "hidden", "window"):
            set_(self, name, int(getattr(self, name)))
        set_(self, "dropout", float(self.dropout))
        if self.cnn != "head":
            raise ValueError(f"HeadSpec is for cnn 'head', got {self.cnn!r}")
        if self.n_classes < 2 or self.hidden < 1 or self.in_size < 1 or self.window < 1:
            raise ValueError("n_classes must be at least 2; hidden, in_size and window positive")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class HeadNet(nn.Module):
    """(batch, [1,] encoder width, frames) -> logits."""

    takes_lengths = True
    #: Module names in forward order (transfer freezes a prefix by name).
    layer_order = ("norm", "proj", "attention", "out")

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        self.norm = nn.LayerNorm(spec.in_size)
        self.proj = nn.Linear(spec.in_size, spec.hidden)
        self.attention = nn.Linear(spec.hidden, 1) if spec.pooling == "attention" else None
        self.dropout = nn.Dropout(spec.dropout)
        self.out = nn.Linear(2 * spec.hidden, spec.n_classes)

    def replace_head(self, n_classes: int) -> None:
        """A fresh output layer with ``n_classes`` outputs (transfer to a new label set)."""
        self.out = nn.Linear(self.out.in_features, n_classes)
        self.spec = self.spec.with_(n_classes=n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 4:
            x = x.squeeze(1)
        frames = x.transpose(1, 2)  # (B, T, D)
        mask = frames.abs().amax(-1) > 0
        if lengths is not None:
            mask &= torch.arange(frames.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        mask[:, 0] |= ~mask.any(1)  # a row with no frame left keeps its first
        h = self.dropout(torch.nn.functional.gelu(self.proj(self.norm(frames))))
        if self.attention is not None:
            scores = self.attention(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        else:
            scores = torch.zeros(mask.shape, device=x.device, dtype=h.dtype).masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=1).unsqueeze(-1)
        return self.out(self.dropout(weighted_stats(h, w, dim=1)))
