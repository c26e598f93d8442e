"""The study's three CNNs (METHOD.md section 4), built from one typed spec.

Each network has 3 conv layers (stride 1, padding 1) and 3 fully connected layers
and returns logits: the loss owns the softmax. (The study's code applied softmax
inside the network and again in the loss, which is why its test loss floors near
1.35; losses here are therefore not comparable with the study's.)
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ser.study.headnet import HeadNet, HeadSpec
from ser.study.plusnet import PlusNet, PlusSpec

CNNName = Literal["bulba", "charma", "squirtle"]
CNNS: tuple[str, ...] = ("bulba", "charma", "squirtle")
DISPLAY = {"bulba": "BulbaNET", "charma": "CharmaNET", "squirtle": "SquirtleNET", "plus": "PlusNet", "head": "encoder head", "ensemble": "ensemble"}


class SpecError(ValueError):
    """An architecture that cannot be built, with the reason."""


def _triple(value: Any, name: str) -> tuple[int, int, int]:
    items = tuple(int(round(float(v))) for v in value)
    if len(items) != 3:
        raise SpecError(f"{name} needs 3 values (one per conv layer), got {len(items)}")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class ArchSpec:
    """Every secondary parameter of METHOD.md section 4, plus the input and output size.

    ``fc_features`` are the outputs of FC1 and FC2; FC3 outputs ``n_classes``.
    ``leaky_slope`` is used by CharmaNET only; ``dropout`` by CharmaNET and SquirtleNET.
    """

    cnn: CNNName = "squirtle"
    in_size: int = 60
    n_classes: int = 7
    conv_channels: tuple[int, int, int] = (188, 156, 340)
    conv_kernels: tuple[int, int, int] = (3, 3, 3)
    pool_kernels: tuple[int, int, int] = (2, 3, 3)
    pool_strides: tuple[int, int, int] = (2, 2, 2)
    bn_momentum: float = 0.4
    dropout: float = 0.40
    fc_features: tuple[int, int] = (3634, 2816)
    leaky_slope: float = 0.01

    def __post_init__(self) -> None:
        # KFP and JSON hand numbers back as floats and lists: normalise here, once.
        set_ = object.__setattr__
        set_(self, "in_size", int(round(float(self.in_size))))
        set_(self, "n_classes", int(round(float(self.n_classes))))
        for name in ("conv_channels", "conv_kernels", "pool_kernels", "pool_strides"):
            set_(self, name, _triple(getattr(self, name), name))
        fc = tuple(int(round(float(v))) for v in self.fc_features)
        if len(fc) != 2:
            raise SpecError(f"fc_features needs 2 values (FC1, FC2), got {len(fc)}")
        set_(self, "fc_features", fc)
        set_(self, "bn_momentum", float(self.bn_momentum))
        set_(self, "dropout", float(self.dropout))
        set_(self, "leaky_slope", float(self.leaky_slope))
        self.validate()

    def validate(self) -> None:
        """Fail before any training if the spec cannot produce a network."""
        if self.cnn not in CNNS:
            raise SpecError(f"cnn must be one of {CNNS}, got {self.cnn!r}")
        if self.n_classes < 2:
            raise SpecError("n_classes must be at least 2")
        if min(self.conv_channels) < 1 or min(self.fc_features) < 1:
            raise SpecError("conv channels and FC features must be positive")
        if not 0.0 < self.bn_momentum < 1.0:
            raise SpecError(f"bn_momentum must be in (0, 1), got {self.bn_momentum}")
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"dropout must be in [0, 1), got {self.dropout}")
        self.feature_map_sizes()

    def feature_map_sizes(self) -> list[int]:
        """Side length after each conv and pool; raises SpecError if one drops below 1."""
        side, sizes = self.in_size, []
        for layer, (ck, pk, ps) in enumerate(zip(self.conv_kernels, self.pool_kernels, self.pool_strides), 1):
            side = side + 2 - ck + 1  # stride 1, padding 1
            if side < 1:
                raise SpecError(f"conv{layer} (kernel {ck}) leaves no pixels of a {self.in_size}x{self.in_size} input")
            if side < pk:
                raise SpecError(
                    f"pool{layer} (kernel {pk}, stride {ps}) does not fit a {side}x{side} feature map: "
                    f"the pooling chain shrinks a {self.in_size}x{self.in_size} image below one pixel"
                )
            side = (side - pk) // ps + 1
            sizes.append(side)
        return sizes

    @property
    def flat_features(self) -> int:
        return self.conv_channels[2] * self.feature_map_sizes()[-1] ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"unknown ArchSpec fields: {sorted(unknown)}")
        return cls(**data)

    def with_(self, **changes: Any) -> "ArchSpec":
        return replace(self, **changes)


#: The study's optimal English model: SquirtleNET, mel 60x60 (METHOD.md section 4).
OPTIMAL_ENGLISH = ArchSpec()
PRESETS: dict[str, ArchSpec] = {"optimal-english": OPTIMAL_ENGLISH}


class _Net(nn.Module):
    """Shared shape: three conv blocks, flatten, three FC layers; subclasses wire them."""

    #: Module names in forward order; the transfer subsets freeze a prefix of this.
    layer_order: tuple[str, ...] = ()

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        c1, c2, c3 = spec.conv_channels
        k1, k2, k3 = spec.conv_kernels
        self.conv1 = nn.Conv2d(1, c1, k1, stride=1, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, k2, stride=1, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, k3, stride=1, padding=1)
        f1, f2 = spec.fc_features
        self.fc1 = nn.Linear(spec.flat_features, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, spec.n_classes)

    def pool(self, i: int, kind: str) -> nn.Module:
        k, s = self.spec.pool_kernels[i], self.spec.pool_strides[i]
        return nn.MaxPool2d(k, s) if kind == "max" else nn.AvgPool2d(k, s)

    def replace_head(self, n_classes: int) -> None:
        """Swap the last FC layer for a fresh one with ``n_classes`` outputs (transfer)."""
        self.fc3 = nn.Linear(self.fc3.in_features, n_classes)
        self.spec = self.spec.with_(n_classes=n_classes)

    @staticmethod
    def _as_batch(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 3 else x


class BulbaNet(_Net):
    """[conv, ReLU, avg-pool] x3, flatten, FC, batch-norm, FC + ReLU, FC."""

    layer_order = ("conv1", "conv2", "conv3", "fc1", "bn", "fc2", "fc3")

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__(spec)
        self.pool1, self.pool2, self.pool3 = (self.pool(i, "avg") for i in range(3))
        self.bn = nn.BatchNorm1d(spec.fc_features[0], momentum=spec.bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_batch(x)
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        x = self.pool3(torch.relu(self.conv3(x)))
        x = self.bn(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


class CharmaNet(_Net):
    """conv, LeakyReLU, BN, max-pool; conv, LeakyReLU, max-pool; conv, LeakyReLU,
    avg-pool; flatten; FC + ReLU, dropout, FC + ReLU, FC."""

    layer_order = ("conv1", "bn", "conv2", "conv3", "fc1", "dropout", "fc2", "fc3")

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__(spec)
        self.act = nn.LeakyReLU(spec.leaky_slope)
        self.bn = nn.BatchNorm2d(spec.conv_channels[0], momentum=spec.bn_momentum)
        self.pool1, self.pool2, self.pool3 = self.pool(0, "max"), self.pool(1, "max"), self.pool(2, "avg")
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_batch(x)
        x = self.pool1(self.bn(self.act(self.conv1(x))))
        x = self.pool2(self.act(self.conv2(x)))
        x = self.pool3(self.act(self.conv3(x)))
        x = self.dropout(torch.relu(self.fc1(x.flatten(1))))
        return self.fc3(torch.relu(self.fc2(x)))


class SquirtleNet(_Net):
    """conv, ReLU, BN, max-pool; conv, ReLU, avg-pool; conv, ReLU, avg-pool;
    flatten; FC + ReLU, dropout, FC + ReLU, FC."""

    layer_order = ("conv1", "bn", "conv2", "conv3", "fc1", "dropout", "fc2", "fc3")

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__(spec)
        self.bn = nn.BatchNorm2d(spec.conv_channels[0], momentum=spec.bn_momentum)
        self.pool1, self.pool2, self.pool3 = self.pool(0, "max"), self.pool(1, "avg"), self.pool(2, "avg")
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_batch(x)
        x = self.pool1(self.bn(torch.relu(self.conv1(x))))
        x = self.pool2(torch.relu(self.conv2(x)))
        x = self.pool3(torch.relu(self.conv3(x)))
        x = self.dropout(torch.relu(self.fc1(x.flatten(1))))
        return self.fc3(torch.relu(self.fc2(x)))


_CLASSES: dict[str, type[_Net]] = {"bulba": BulbaNet, "charma": CharmaNet, "squirtle": SquirtleNet}


def spec_from_dict(data: dict[str, Any]) -> "ArchSpec | PlusSpec | HeadSpec | EnsembleSpec":
    """The architecture a bundle's ``arch`` dict describes: a study CNN, the ``plus``
    recipe's network (:mod:`ser.study.plusnet`), the ``whisper`` recipe's head over encoder
    embeddings (:mod:`ser.study.headnet`) or an ensemble of one of them."""
    kind = data.get("cnn")
    if kind == "plus":
        return PlusSpec.from_dict(data)
    if kind == "head":
        return HeadSpec.from_dict(data)
    if kind == "ensemble":
        return EnsembleSpec.from_dict(data)
    return ArchSpec.from_dict(data)


@dataclass(frozen=True)
class EnsembleSpec:
    """Models trained on different folds, served as one: their logits are averaged."""

    members: tuple[Any, ...]
    cnn: str = "ensemble"

    def __post_init__(self) -> None:
        members = tuple(m if not isinstance(m, dict) else spec_from_dict(m) for m in self.members)
        if not members or any(isinstance(m, EnsembleSpec) for m in members):
            raise SpecError("an ensemble needs one or more member networks (not ensembles)")
        first = members[0]
        if any((m.in_size, m.n_classes) != (first.in_size, first.n_classes) for m in members):
            raise SpecError("ensemble members must take the same input and predict the same classes")
        object.__setattr__(self, "members", members)

    @property
    def in_size(self) -> int:
        return self.members[0].in_size

    @property
    def n_classes(self) -> int:
        return self.members[0].n_classes

    def to_dict(self) -> dict[str, Any]:
        return {"cnn": self.cnn, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EnsembleSpec":
        unknown = set(data) - {"cnn", "members"}
        if unknown:
            raise SpecError(f"unknown EnsembleSpec fields: {sorted(unknown)}")
        return cls(members=tuple(data["members"]))


class Ensemble(nn.Module):
    """Mean logits of member networks (each in its own eval/train mode)."""

    def __init__(self, spec: EnsembleSpec, members: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.members = nn.ModuleList(members if members is not None else [build(m) for m in spec.members])
        self.takes_lengths = any(getattr(m, "takes_lengths", False) for m in self.members)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        outs = [m(x, lengths) if getattr(m, "takes_lengths", False) else m(x) for m in self.members]
        return torch.stack(outs).mean(0)


class OutputSubset(nn.Module):
    """A trained network scored on some of its classes: the logits of the others are
    dropped, so a model that knows boredom, scored on a corpus without it, is judged on
    the emotions the two share (the usual cross-corpus protocol)."""

    def __init__(self, model: nn.Module, keep: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("keep", torch.as_tensor(list(keep), dtype=torch.long), persistent=False)
        self.takes_lengths = getattr(model, "takes_lengths", False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(x, lengths) if self.takes_lengths else self.model(x)
        return out.index_select(1, self.keep)


def build(spec: "ArchSpec | PlusSpec | HeadSpec | EnsembleSpec") -> nn.Module:
    """A freshly initialised network for the spec (spec already validated)."""
    if isinstance(spec, PlusSpec):
        return PlusNet(spec)
    if isinstance(spec, HeadSpec):
        return HeadNet(spec)
    if isinstance(spec, EnsembleSpec):
        return Ensemble(spec)
    return _CLASSES[spec.cnn](spec)


@dataclass
class ModelBundle:
    """A trained network and what is needed to use it: labels, feature spec, provenance."""

    model: nn.Module
    arch: "ArchSpec | PlusSpec | HeadSpec | EnsembleSpec"
    labels: tuple[str, ...]
    feature_spec: dict[str, Any]
    meta: dict[str, Any]


def save_bundle(path: str | Path, model: _Net, labels: tuple[str, ...] | list[str], feature_spec: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
    """Write model.pt: plain tensors and JSON-able metadata (loads with weights_only=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "arch": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "labels": list(labels),
        "feature_spec": dict(feature_spec),
        "meta": json.loads(json.dumps(meta or {}, default=str)),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def save_with_speeds(src: str | Path, dst: str | Path, speeds: tuple[float, ...]) -> Path:
    """Copy model.pt ``src`` to ``dst`` with the plus networks' test-time speed factors
    (``PlusSpec.speeds``) set to ``speeds``: serving can trade those copies for time
    without retraining, since they change inference only, never the weights."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    arch = spec_from_dict(payload["arch"])
    members = arch.members if isinstance(arch, EnsembleSpec) else (arch,)
    if any(getattr(m, "cnn", "") != "plus" for m in members):
        raise SpecError(f"{src}: speed copies are a switch of the plus network; this model has none")
    changed = tuple(m.with_(speeds=tuple(speeds)) for m in members)
    payload["arch"] = (EnsembleSpec(changed) if isinstance(arch, EnsembleSpec) else changed[0]).to_dict()
    payload["meta"] = {**payload.get("meta", {}), "speeds_override": {"from": list(members[0].speeds), "to": list(changed[0].speeds)}}
    dst = Path(dst)
    torch.save(payload, dst)
    return dst


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load model.pt written by :func:`save_bundle`, in eval mode on ``device``."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a ser model file ({exc})") from None
    if not isinstance(payload, dict) or not {"arch", "state_dict", "labels"} <= set(payload):
        raise ValueError(f"{path}: not a ser model file (missing arch, state_dict or labels)")
    if (payload.get("feature_spec") or {}).get("kind") == "whisper":
        from ser.data import encoder

        encoder.register_beside(path)  # a packaged model carries its encoder next to model.pt
    arch = spec_from_dict(payload["arch"])
    model = build(arch)
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return ModelBundle(model, arch, tuple(payload["labels"]), payload["feature_spec"], payload.get("meta", {}))
