"""A thin MLflow adapter: nested runs, per-epoch metrics, models, registry aliases.

    tracker = Tracker.from_env()            # MLFLOW_TRACKING_URI; NullTracker if unreachable
    with tracker.run("stage-1", kind="stage"):
        with tracker.run("vector-07", kind="vector", params=vector):
            with tracker.run("fold-3", kind="fold"):
                fit(..., on_epoch=tracker.epoch_callback())
    with tracker.run("final", kind="final"):          # system metrics are on for final/transfer
        logged = tracker.log_model("out/model.pt", registered_name="ser-english")
    champion.gate("ser-english", logged.version, f1, score_the_champion_on_the_same_rows)   # ser.adapters.champion

Runs nest inside whatever run is open. The registry uses aliases, never stages:
``challenger`` marks the newest registered candidate, ``champion`` the one serving,
moved only by the promotion gate :func:`ser.adapters.champion.gate` (a compare-and-set). Training and search code talks to
this module only; a NullTracker with the same methods stands in when tracking is off.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

log = logging.getLogger(__name__)

KINDS = ("stage", "vector", "fold", "final", "transfer", "evaluate")
SYSTEM_METRIC_KINDS = frozenset({"final", "transfer"})
EPOCH_FIELDS = ("train_loss", "val_loss", "accuracy", "macro_f1")
CHALLENGER, CHAMPION = "challenger", "champion"
DEFAULT_EXPERIMENT = "ser"
BUNDLE_FILE = "model.pt"
#: Where the original bundle sits inside a logged model (mlflow.pytorch ``extra_files``).
BUNDLE_IN_MODEL = f"extra_files/{BUNDLE_FILE}"

_warned: set[str] = set()


class TrackingError(RuntimeError):
    """Tracking was required (strict) or used wrongly, with what to check."""


@dataclass(frozen=True)
class LoggedModel:
    """What :meth:`Tracker.log_model` produced."""

    model_uri: str  # models:/m-... (the logged model)
    run_id: str | None
    model_id: str | None
    registered_name: str | None = None
    version: str | None = None  # registry version, set when registered (alias challenger)

    @property
    def registry_uri(self) -> str | None:
        return f"models:/{self.registered_name}/{self.version}" if self.version else None


def unreachable_reason(uri: str, timeout: float = 3.0) -> str | None:
    """None when an http(s) MLflow server at ``uri`` answers /health, else why not."""
    if not uri.startswith(("http://", "https://")):
        return None  # local stores (file:, sqlite:) need no server
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status == 200:
                return None
            return f"the MLflow server at {uri} answered HTTP {resp.status} on /health"
    except urllib.error.HTTPError as exc:
        return f"the MLflow server at {uri} answered HTTP {exc.code} on /health"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"cannot reach the MLflow server at {uri} ({reason})"


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys; values become strings MLflow accepts (<= 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            text = str(list(value) if isinstance(value, tuple) else value)
            flat[name] = text if len(text) <= 6000 else text[:5997] + "..."
    return flat


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Finite numbers only: None and NaN (not evaluated) are left out."""
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def _cpu_requirements() -> list[str]:
    """Pins for the logged model's environment: the CPU build of this torch (MLflow drops '+cpu')."""
    import numpy
    import torch

    base = torch.__version__.split("+")[0]
    return [f"torch=={base}+cpu", "--extra-index-url https://download.pytorch.org/whl/cpu", f"numpy=={numpy.__version__}"]


class Tracker:
    """MLflow through its fluent API; every method works inside :meth:`run` contexts."""

    enabled = True

    def __init__(self, uri: str, experiment: str | None = None) -> None:
        import mlflow

        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one line per run is noise in a search
        self.uri = uri
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(self.experiment)

    @classmethod
    def from_env(cls, strict: bool = False, experiment: str | None = None) -> "Tracker | NullTracker":
        """A Tracker for MLFLOW_TRACKING_URI.

        If tracking is not configured or the server does not answer: ``strict`` raises
        :class:`TrackingError` at once (before any training); otherwise one warning
        "tracking skipped: ..." is logged (WARNING; stderr under the CLI) and a :class:`NullTracker` is returned.
        """
        uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        reason = "MLFLOW_TRACKING_URI is not set" if not uri else unreachable_reason(uri)
        if reason is None:
            try:
                return cls(uri, experiment)
            except Exception as exc:  # a server that answers /health but refuses the API
                reason = f"MLflow at {uri} refused to open experiment {experiment or DEFAULT_EXPERIMENT!r}: {exc}"
        if strict:
            raise TrackingError(f"tracking is required (strict) but {reason}; start it with `ser services up` "
                                "or set MLFLOW_TRACKING_URI, or run without strict tracking")
        if reason not in _warned:
            _warned.add(reason)
            log.warning("tracking skipped: %s; training goes on without MLflow", reason)
        return NullTracker(reason)

    # -- runs -----------------------------------------------------------------------

    @contextmanager
    def run(self, name: str, kind: str = "stage", params: Mapping[str, Any] | None = None,
            tags: Mapping[str, Any] | None = None, parent: str | None = None,
            system_metrics: bool | None = None) -> Iterator[Any]:
        """Open a run (the one way ser opens an MLflow run): under ``parent`` (a run id,
        e.g. a pipeline's run) when given, else nested in the current one (if any);
        tagged ``ser.kind``; system metrics for final/transfer kinds unless
        ``system_metrics`` says otherwise; yields mlflow's ActiveRun."""
        import mlflow

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        all_tags = {"ser.kind": kind, **{k: str(v) for k, v in (tags or {}).items()}}
        system = kind in SYSTEM_METRIC_KINDS if system_metrics is None else system_metrics
        with mlflow.start_run(run_name=name, nested=parent is None and mlflow.active_run() is not None, parent_run_id=parent or None,
                              tags=all_tags, log_system_metrics=True if system else None) as active:
            if params:
                mlflow.log_params(_flatten(params))
            yield active

    @staticmethod
    def _require_run() -> Any:
        import mlflow

        active = mlflow.active_run()
        if active is None:
            raise TrackingError("no open run: log inside `with tracker.run(...)`")
        return active

    def active_run_id(self) -> str | None:
        import mlflow

        active = mlflow.active_run()
        return active.info.run_id if active else None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        import mlflow

        self._require_run()
        values = _numbers(metrics)
        if values:
            mlflow.log_metrics(values, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        self._require_run()
        mlflow.log_params(_flatten(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        self._require_run()
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or every file of a directory, under ``artifact_path``."""
        import mlflow

        self._require_run()
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
        else:
            raise FileNotFoundError(f"log_artifact: {path} does not exist")

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """Log a dict as JSON or YAML (by the file's extension)."""
        import mlflow

        self._require_run()
        mlflow.log_dict(dict(data), artifact_file)

    def epoch_callback(self) -> Callable[[Any], None]:
        """``on_epoch`` for training: logs train_loss, val_loss, accuracy, macro_f1 at step=epoch."""

        def on_epoch(record: Any) -> None:
            self.log_metrics({name: _field(record, name) for name in EPOCH_FIELDS}, step=int(_field(record, "epoch")))

        return on_epoch

    # -- models ---------------------------------------------------------------------

    def log_model(self, bundle: str | Path, registered_name: str | None = None, input_example: Any = None,
                  name: str = "model") -> LoggedModel:
        """Log a model.pt bundle with mlflow.pytorch (pt2 format, signature, input example),
        the bundle itself riding along as ``extra_files/model.pt``.

        ``bundle`` is model.pt or a directory holding it. ``input_example`` is a float
        batch (n, N, N); a batch of one is repeated to two, since pt2 fixes a batch size
        of one into the exported graph. Default: two random N x N images. With
        ``registered_name`` the model is registered and becomes the ``challenger``.
        """
        import mlflow
        import numpy as np

        from ser.study.models import load_bundle

        path = Path(bundle)
        if path.is_dir():
            path = path / BUNDLE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"log_model: no model bundle at {path}")
        loaded = load_bundle(path)
        size = loaded.arch.in_size
        if input_example is None:
            example = np.random.default_rng(0).random((2, size, size), dtype=np.float32)
        else:
            example = np.asarray(input_example, dtype=np.float32)
            if example.ndim == 2:
                example = example[None]
            if example.shape[0] < 2:
                example = np.concatenate([example, example])
        with tempfile.TemporaryDirectory(prefix="ser-log-model-") as tmp:
            extra = path
            if path.name != BUNDLE_FILE:  # resolve() looks for extra_files/model.pt
                extra = Path(tmp) / BUNDLE_FILE
                shutil.copyfile(path, extra)
            info = mlflow.pytorch.log_model(
                loaded.model, name=name, input_example=example, serialization_format="pt2",
                pip_requirements=_cpu_requirements(), extra_files=[str(extra)],
                metadata={"labels": list(loaded.labels), "feature_spec": loaded.feature_spec,
                          "arch": loaded.arch.to_dict(), "ser_bundle": BUNDLE_IN_MODEL},
            )
        logged = LoggedModel(info.model_uri, info.run_id, getattr(info, "model_id", None))
        if registered_name:
            version = self.register_challenger(info.model_uri, registered_name)
            logged = LoggedModel(logged.model_uri, logged.run_id, logged.model_id, registered_name, version)
        return logged

    # -- registry -------------------------------------------------------------------

    def register_challenger(self, model_uri: str, name: str) -> str:
        """Register ``model_uri`` as a new version of ``name`` and point ``challenger`` at it."""
        import mlflow
        from mlflow import MlflowClient

        version = str(mlflow.register_model(model_uri, name).version)
        MlflowClient().set_registered_model_alias(name, CHALLENGER, version)
        return version

    def champion_info(self, name: str) -> dict[str, Any] | None:
        """The champion version of ``name``: version, run, source, tags; None without one."""
        from ser.adapters import champion

        return champion.info(name)


class NullTracker:
    """Tracking switched off: same methods, nothing recorded, nothing fails."""

    enabled = False

    def __init__(self, reason: str = "tracking disabled") -> None:
        self.reason = reason

    @contextmanager
    def run(self, name: str, kind: str = "stage", params: Mapping[str, Any] | None = None,
            tags: Mapping[str, Any] | None = None) -> Iterator[None]:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        yield None

    def active_run_id(self) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        pass

    def epoch_callback(self) -> Callable[[Any], None]:
        return lambda record: None

    def log_model(self, bundle: str | Path, registered_name: str | None = None, input_example: Any = None,
                  name: str = "model") -> None:
        return None

    def register_challenger(self, model_uri: str, name: str) -> None:
        return None

    def champion_info(self, name: str) -> None:
        return None
