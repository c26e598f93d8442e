"""Whisper's encoder in PyTorch, built from the same CTranslate2 files, for its layers.

Why: CTranslate2 returns the encoder's last layer only, and for emotion the middle
layers carry more. A logistic-regression probe on the mean and deviation of each
layer's embeddings, on EmoDB speakers left out (docs/QUALITY.md): 77% UA from the last
layer, 88% from the third; the ``whisper`` recipe lets its head learn a weighting of
all of them (``features.encoder_layers=all``), as SUPERB does for speech encoders, so no
layer is picked by looking at a corpus.

The network is Whisper's encoder as published (two convolutions with GELU, sinusoidal
positions, pre-norm transformer blocks, a final layer norm), about 40 lines; its weights
are read from the encoder's ``model.bin`` (CTranslate2's binary format, read-only here),
so the files, their identity and the cache keys are the ones :mod:`ser.data.encoder`
already pins. Computed in float32, its last layer equals CTranslate2's float32 output
to within 1e-4 (tests/test_encoder.py).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: CTranslate2 data type ids (ctranslate2/specs/model_spec.py) -> numpy.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: str | Path, prefix: str = "encoder/", data: bool = True) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` whose names start with ``prefix``
    (format version 6: a header, then name, shape, dtype and bytes per variable);
    ``data=False``: their names only (the values are empty arrays), without reading them."""

    with open(path, "rb") as fh:

        def number(fmt: str) -> int:
            return struct.unpack("<" + fmt, fh.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return fh.read(number("H"))[:-1].decode()

        version = number("I")
        if version < 5:
            raise ValueError(f"{path}: CTranslate2 model format {version} is not supported (5 or later)")
        spec_name = string()
        if spec_name != "WhisperSpec":
            raise ValueError(f"{path}: a {spec_name}, not a Whisper model")
        number("I")  # revision
        found: dict[str, np.ndarray] = {}
        for _ in range(number("I")):
            name = string()
            shape = [number("I") for _ in range(number("B"))]
            dtype, size = number("B"), number("I")
            if not (data and name.startswith(prefix)):
                fh.seek(size, 1)
                found.update({name[len(prefix):]: np.empty(0)} if name.startswith(prefix) else {})
                continue
            if dtype not in _DTYPES:
                raise ValueError(f"{path}: {name} has a data type ({dtype}) this reader does not know")
            found[name[len(prefix):]] = np.frombuffer(fh.read(size), _DTYPES[dtype]).reshape(shape)
    return found


def _blocks(names) -> int:
    """Transformer blocks among an encoder's variable names (one attention input each)."""
    return sum(1 for k in names if k.endswith("self_attention/linear_0/weight"))


@lru_cache(maxsize=8)
def hidden_states(directory: str) -> int:
    """How many hidden states :class:`WhisperEncoder` gives for the files in
    ``directory`` (blocks + 1: 7 for base), read from the names in model.bin."""
    return 1 + _blocks(read_ct2(Path(directory) / "model.bin", data=False))


class WhisperEncoder(nn.Module):
    """(batch, 80 mel bands, 3000 frames) -> the hidden states, as transformers'
    ``output_hidden_states`` gives them: the input to the first block, then every
    block's output, the last one after the final layer norm (7 for base)."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.heads = int(weights["num_heads"])
        self.blocks = _blocks(weights)
        for name, value in weights.items():
            if value.dtype.kind == "f":
                self.register_buffer(name.replace("/", "__"), torch.from_numpy(value.astype(np.float32)))

    def _w(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace("/", "__"))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self._w(f"{name}/gamma"), self._w(f"{name}/beta"))

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._w(f"{name}/weight"), self._w(f"{name}/bias"))

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> list[torch.Tensor]:
        x = F.gelu(F.conv1d(mel, self._w("conv1/weight"), self._w("conv1/bias"), padding=1))
        x = F.gelu(F.conv1d(x, self._w("conv2/weight"), self._w("conv2/bias"), stride=2, padding=1)).transpose(1, 2)
        x = x + self._w("position_encodings/encodings")[: x.shape[1]]
        batch, frames, width = x.shape
        states = [x]
        for i in range(self.blocks):
            block = f"layer_{i}"
            q, k, v = self._linear(self._norm(x, f"{block}/self_attention/layer_norm"), f"{block}/self_attention/linear_0") \
                .view(batch, frames, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, frames, width)
            x = x + self._linear(attended, f"{block}/self_attention/linear_1")
            hidden = F.gelu(self._linear(self._norm(x, f"{block}/ffn/layer_norm"), f"{block}/ffn/linear_0"))
            x = x + self._linear(hidden, f"{block}/ffn/linear_1")
            states.append(x)
        states[-1] = self._norm(x, "layer_norm")
        return states


@lru_cache(maxsize=2)
def load(directory: str) -> WhisperEncoder:
    """The encoder of the CTranslate2 Whisper files in ``directory`` (one per process)."""
    return WhisperEncoder(read_ct2(Path(directory) / "model.bin")).eval()
