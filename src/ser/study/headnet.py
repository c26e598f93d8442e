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

With ``layers`` > 1 the input holds every hidden state of the encoder stacked
(``features.encoder_layers=all``); each is layer-normed and they are averaged with
weights the head learns (softmax over one number per layer, starting equal), as SUPERB
weighs the layers of a speech encoder: the training speakers decide which layers carry
emotion, not a choice made by looking at a test corpus.
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
    layers: int = 1  #: hidden states stacked in the input (in_size = layers x the encoder's width), weighed by the head

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("in_size", "n_classes", "hidden", "window", "layers"):
            set_(self, name, int(getattr(self, name)))
        set_(self, "dropout", float(self.dropout))
        if self.cnn != "head":
            raise ValueError(f"HeadSpec is for cnn 'head', got {self.cnn!r}")
        if self.n_classes < 2 or self.hidden < 1 or self.in_size < 1 or self.window < 1:
            raise ValueError("n_classes must be at least 2; hidden, in_size and window positive")
        if self.layers < 1 or self.in_size % self.layers:
            raise ValueError(f"in_size {self.in_size} is not {self.layers} stacked layers of equal width")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class LayerMix(nn.Module):
    """(batch, frames, layers x width) -> (batch, frames, width): each layer normalised,
    then their weighted mean under learned softmax weights."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(layers))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        stacked = frames.unflatten(-1, (self.weights.numel(), -1))
        stacked = nn.functional.layer_norm(stacked, stacked.shape[-1:])
        return torch.matmul(torch.softmax(self.weights, 0).to(stacked.dtype), stacked)  # (L) x (..., L, W): one weighted sum over layers


class HeadNet(nn.Module):
    """(batch, [1,] encoder width [x layers], frames) -> logits."""

    takes_lengths = True
    #: Module names in forward order (transfer freezes a prefix by name).
    layer_order = ("mix", "norm", "proj", "attention", "out")

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        width = spec.in_size // spec.layers
        self.mix = LayerMix(spec.layers) if spec.layers > 1 else nn.Identity()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, spec.hidden)
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
        h = self.dropout(torch.nn.functional.gelu(self.proj(self.norm(self.mix(frames)))))
        if self.attention is not None:
            scores = self.attention(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        else:
            scores = torch.zeros(mask.shape, device=x.device, dtype=h.dtype).masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=1).unsqueeze(-1)
        return self.out(self.dropout(weighted_stats(h, w, dim=1)))
