"""How a loaded network runs at serving time: the eager reference or a faster variant.

Why this module exists: the study's optimal SquirtleNET holds about 55 M parameters,
~97% of them in the fully connected layers (fc1 alone is 12240 x 3634). At batch 1 a
forward pass streams those 220 MB of fp32 weights from memory once per request, so a
CPU server spends most of its time reading weights, not computing. Storing the
linear weights as int8 (PyTorch's dynamic quantisation: weights int8, activations
quantised on the fly per batch) reads a quarter of the bytes; the convolutions stay
fp32. Measured on the 2-core machine (benchmarks/serving.py, RESULTS.md).

Backends (:data:`BACKENDS`):

``eager``
    the trained module as it is, fp32: the reference every other backend is checked
    against (``ser serve --backend eager``).
``int8``
    :func:`torch.ao.quantization.quantize_dynamic` over every ``nn.Linear``; reduced
    precision, so it is checked by top-1 agreement and accuracy on real clips
    (``benchmarks/serving.py --agreement``), not by a tolerance.

The device is chosen here too: ``cuda:N`` when the server hands the worker a GPU
(TorchServe's ``gpu_id``, a KServe GPU limit) and CUDA is present; int8 dynamic
quantisation is a CPU kernel, so on a GPU the backend falls back to eager fp32 and
says so in :attr:`Engine.description`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Backends a server can be asked for, the reference first.
BACKENDS: tuple[str, ...] = ("eager", "int8")
DEFAULT_BACKEND = "int8"


class BackendError(ValueError):
    """An unknown backend name or device."""


def check_backend(name: str) -> str:
    """``name`` if it is a known backend, else a BackendError naming the choices."""
    if name not in BACKENDS:
        raise BackendError(f"unknown inference backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def pick_device(gpu_id: Any = None) -> torch.device:
    """``cuda:<gpu_id>`` when a GPU id is given and CUDA is available, else the CPU."""
    if gpu_id is None or gpu_id == "" or not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        index = int(gpu_id)
    except (TypeError, ValueError):
        raise BackendError(f"gpu id {gpu_id!r} is not an integer") from None
    if not 0 <= index < torch.cuda.device_count():
        raise BackendError(f"gpu id {index} but only {torch.cuda.device_count()} CUDA devices are visible")
    return torch.device("cuda", index)


@dataclass
class Engine:
    """A network ready to run: ``engine(batch) -> logits`` (numpy in, numpy out)."""

    module: torch.nn.Module
    backend: str
    device: torch.device

    @property
    def description(self) -> str:
        return f"{self.backend} on {self.device}"

    def __call__(self, batch: np.ndarray, lengths: torch.Tensor | None = None) -> np.ndarray:
        """Logits of a batch; ``lengths`` (valid frames per row) for networks that take
        them (the plus network and its ensembles)."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type != "cpu":
            x = x.to(self.device, non_blocking=True)
        with torch.inference_mode():
            out = self.module(x, lengths) if lengths is not None else self.module(x)
            return out.float().cpu().numpy()


def prepare(model: torch.nn.Module, backend: str = DEFAULT_BACKEND, device: torch.device | str | None = None) -> Engine:
    """The trained ``model`` (eval mode) as an :class:`Engine` for ``backend`` on ``device``.

    The model is not modified: int8 works on a copy.
    """
    check_backend(backend)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = model.eval()
    if device.type != "cpu":
        if backend != "eager":
            logger.info("backend %s is CPU-only; running eager fp32 on %s", backend, device)
        return Engine(model.to(device), "eager", device)
    if backend == "int8":
        import copy
        import warnings

        with warnings.catch_warnings():
            # torch 2.13 points eager quantisation users at torchao; the API still works
            # and is what the installed stack offers without another dependency.
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8)
        return Engine(quantized.eval(), "int8", device)
    return Engine(model.cpu(), "eager", device)


def agreement(model: torch.nn.Module, images: np.ndarray, y: np.ndarray, backend: str, *, batch: int = 64) -> dict[str, float]:
    """How far ``backend`` strays from the eager reference on labelled feature images.

    Why: a reduced-precision backend is accepted only if it answers like the trained
    model on real clips (the target: >= 99% top-1 agreement and unweighted accuracy
    within 0.5 points). Returns top-1 agreement, both unweighted accuracies (mean
    per-class recall) and the largest probability difference.
    """
    from sklearn.metrics import balanced_accuracy_score

    from ser.serve.serving import softmax

    ref, other = prepare(model, "eager"), prepare(model, backend)
    p_ref = np.concatenate([softmax(ref(images[i : i + batch])) for i in range(0, len(images), batch)])
    p_other = np.concatenate([softmax(other(images[i : i + batch])) for i in range(0, len(images), batch)])
    top_ref, top_other = p_ref.argmax(1), p_other.argmax(1)
    return {
        "clips": int(len(images)),
        "top1_agreement": float((top_ref == top_other).mean()),
        "ua_eager": float(balanced_accuracy_score(y, top_ref)),
        f"ua_{backend}": float(balanced_accuracy_score(y, top_other)),
        "max_abs_prob_diff": float(np.abs(p_ref - p_other).max()),
    }
