"""MLflow bookkeeping for the study commands (``ser train``, ``ser transfer``, ``ser evaluate``).

The commands stay about training; this module turns what they produce into MLflow
runs through :mod:`ser.adapters.tracking`:

    session = open_session("auto")                      # or "strict" / "off"
    with session.final_run(seed=0, arch=arch, ...):     # kind "final", system metrics on
        final_train(..., on_epoch=session.epoch_callback())
        ... write OUT/ ...
        session.log_final(OUT, history=..., test=test, macro_f1=f1, register="ser-english")

:meth:`Session.log_final` logs the summary metrics, the files of OUT (metrics.json,
curves, confusion matrix, improvements, config.json ...), the feature spec, the
model (mlflow.pytorch with signature and input example), registers it (alias
``challenger``) and runs the promotion gate (:func:`ser.adapters.champion.gate`, the one the
pipelines use too): the current ``champion`` is fetched from the registry and
scored on THIS run's test rows, and ``champion`` moves only if the new model's macro
F1 is higher (a compare-and-set: a concurrent promotion is re-scored, never
overwritten). A champion that cannot be scored on these rows (other labels, image
size or feature spec) keeps its alias.

Modes: ``auto`` tracks when MLFLOW_TRACKING_URI is set and answers, else says
"tracking skipped: ..." once and the command goes on; ``strict`` fails before any
training; ``off`` records nothing. A tracking call that fails half-way never goes
unnoticed: in ``auto`` one "tracking failed: ..." line names the step and the
incomplete run, and logging stops there (the files on disk are complete); in
``strict`` it raises :class:`ser.adapters.tracking.TrackingError`.

After a run is fully logged, ``OUT/tracking.json`` records the run id, registry
version and promotion decision; a finished run found again on disk (same config)
is logged from its files when it was not tracked before (e.g. the server was down).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ser.data.labels import GREEK
from ser.adapters.tracking import KINDS, NullTracker, Tracker, TrackingError, unreachable_reason

log = logging.getLogger(__name__)

MODES = ("auto", "off", "strict")
ENGLISH_MODEL, GREEK_MODEL = "ser-english", "ser-greek"
RECORD_FILE = "tracking.json"
#: Files of a final/transfer output folder logged as artifacts (when present).
RESULT_FILES = ("metrics.json", "learning_curve.png", "confusion_matrix.png", "improvements.md", "improvements.csv",
                "config.json", "history.csv", "per_class.md", "per_class.csv", "runs.md", "runs.csv", "summary.md",
                "summary.csv", "seeds.md", "seeds.csv", "seeds.json", "predictions.csv")
HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "accuracy", "macro_f1", "ua")


def add_arguments(parser: Any, register: bool = True) -> None:
    """--tracking, --experiment and (for commands that make models) --register / --no-register."""
    parser.add_argument("--tracking", choices=MODES, default="auto",
                        help="MLflow tracking (server from $MLFLOW_TRACKING_URI): auto = track when the server answers, "
                        "else say 'tracking skipped' and go on (default); strict = fail before training when it cannot "
                        "track; off = record nothing")
    parser.add_argument("--experiment", default=None, metavar="NAME",
                        help="MLflow experiment (default $MLFLOW_EXPERIMENT_NAME, else 'ser')")
    if register:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--register", default=None, metavar="NAME",
                           help=f"registered model name for the new model (default {ENGLISH_MODEL}, or {GREEK_MODEL} for "
                           "the Greek label set); it gets alias challenger, and champion only if it beats the champion's "
                           "macro F1 on this run's test set")
        group.add_argument("--no-register", action="store_true",
                           help="log the model in its run but do not register it (no challenger, no promotion)")


def registry_name(labels: Sequence[str], register: str | None = None, no_register: bool = False) -> str | None:
    """The registered model a new model goes to: ``register``, else by label set; None with ``no_register``."""
    if no_register:
        return None
    if register:
        return register
    return GREEK_MODEL if tuple(labels) == GREEK else ENGLISH_MODEL


def open_session(mode: str = "auto", experiment: str | None = None) -> Session:
    """A :class:`Session` for ``mode`` (see the module doc); strict raises TrackingError at once."""
    if mode not in MODES:
        raise ValueError(f"tracking mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return Session(NullTracker("tracking off (--tracking off)"))
    tracker = Tracker.from_env(strict=mode == "strict", experiment=experiment)
    if tracker.enabled:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars per model upload are noise here
        log.info("tracking: MLflow at %s, experiment %r", tracker.uri, tracker.experiment)
    return Session(tracker, strict=mode == "strict")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _kind(kind: str) -> tuple[str, dict[str, str]]:
    """Tracker kinds are a fixed list; a kind it does not know yet rides as the ``ser.kind`` tag of a plain run."""
    return (kind, {}) if kind in KINDS else ("stage", {"ser.kind": kind})


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """history.csv rows (empty cells: not evaluated)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: row.get(k) for k in HISTORY_FIELDS} for row in csv.DictReader(f)]


class Session:
    """One command's tracking: a Tracker (or NullTracker) plus the guard that keeps failures loud."""

    def __init__(self, tracker: Tracker | NullTracker, strict: bool = False) -> None:
        self.tracker = tracker
        self.strict = strict
        self.broken: str | None = None
        self._epochs: set[int] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.tracker.enabled) and self.broken is None

    # -- the guard -----------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> None:
        run_id = None
        try:
            run_id = self.tracker.active_run_id()
        except Exception:  # noqa: BLE001, S110 - only for the message
            pass
        where = f"MLflow run {run_id}" if run_id else "the MLflow run"
        if self.strict:
            raise TrackingError(f"tracking failed (strict) while trying to {what}: {_first_line(exc)}; "
                                f"stopped here, {where} ends as failed") from exc
        self.broken = f"{what}: {_first_line(exc)}"
        log.warning("tracking failed while trying to %s: %s; %s is incomplete and nothing more is logged by this "
                    "command (the files on disk are complete)", what, _first_line(exc), where)
        uri = getattr(self.tracker, "uri", "")
        if run_id and uri and unreachable_reason(uri, timeout=2) is None:  # the server answers: mark the run
            try:
                self.tracker.set_tags({"ser.adapters.tracking": "incomplete", "ser.tracking_error": self.broken[:500]})
            except Exception:  # noqa: BLE001, S110 - best effort, already reported
                pass

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Run one tracking step; (False, None) when tracking is off, broken, or this step failed."""
        if not self.enabled:
            return False, None
        try:
            return True, fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any MLflow/S3/network failure is reported, not raised (auto)
            self._fail(what, exc)
            return False, None

    # -- runs ----------------------------------------------------------------------

    @contextmanager
    def run(self, name: str, kind: str, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """An MLflow run around the body (nested in any open one); the body runs even when tracking fails."""
        if not self.enabled:
            yield None
            return
        tracker_kind, kind_tags = _kind(kind)
        context = self.tracker.run(name, kind=tracker_kind, params=params, tags={**kind_tags, **(tags or {})})
        ok, active = self.call(f"open run {name!r}", context.__enter__)
        if not ok:
            yield None
            return
        saved, self._epochs = self._epochs, set()
        try:
            yield active
        except BaseException:
            exc_info = sys.exc_info()
            try:
                context.__exit__(*exc_info)  # the run ends FAILED (KILLED on Ctrl-C)
            except Exception:  # noqa: BLE001, S110 - the body's exception is the one to see
                pass
            raise
        else:
            try:  # closed even after a failed step, so later runs do not nest under a dangling one
                context.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001
                if self.broken is None:
                    self._fail(f"close run {name!r}", exc)
        finally:
            self._epochs = saved

    def final_run(self, *, seed: int, arch: Any, cfg: Any, spec: Any, labels: Sequence[str], split: str, test_size: float,
                  features: str | Path, config_hash: str, sizes: Mapping[str, Any] | None = None,
                  out: str | Path | None = None):
        """The "final" run of one seed: params = arch + train config + feature spec + split + seed."""
        params = {"arch": arch.to_dict(), "train": cfg.to_dict(), "feature_spec": spec.to_dict(), "split": split,
                  "test_size": test_size, "seed": seed, "features": str(features), "labels": list(labels),
                  "config_hash": config_hash, "sizes": dict(sizes or {})}
        tags = {"ser.command": "train", "seed": seed, "ser.config_hash": config_hash, "ser.features": str(features),
                "ser.out": str(out or "")}
        return self.run(f"final seed {seed}", "final", params=params, tags=tags)

    # -- logging steps -------------------------------------------------------------

    def epoch_callback(self) -> Callable[[Any], None]:
        """``on_epoch`` for training: per-epoch metrics at step=epoch (stops quietly after a reported failure)."""
        log = self.tracker.epoch_callback()

        def on_epoch(record: Any) -> None:
            epoch = int(record["epoch"] if isinstance(record, Mapping) else record.epoch)
            ok, _ = self.call(f"log the metrics of epoch {epoch}", log, record)
            if ok:
                self._epochs.add(epoch)

        return on_epoch

    def log_history(self, history: Iterable[Any]) -> None:
        """Per-epoch metrics of the epochs not logged live (a resumed fit, a run logged from disk)."""
        on_epoch = self.epoch_callback()
        for record in history:
            row = dict(record) if isinstance(record, Mapping) else record.to_dict()
            row = {k: None if row.get(k) in ("", None) else float(row[k]) for k in HISTORY_FIELDS}
            epoch = int(row["epoch"])
            if epoch not in self._epochs:
                on_epoch({**row, "epoch": epoch})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.call("log metrics", self.tracker.log_metrics, metrics, step=step)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.call(f"log {artifact_file}", self.tracker.log_dict, dict(data), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.call("set tags", self.tracker.set_tags, tags)

    def log_files(self, folder: str | Path, names: Iterable[str] = RESULT_FILES, artifact_path: str | None = None) -> None:
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                self.call(f"log artifact {name}", self.tracker.log_artifact, path, artifact_path)

    def log_final(self, out: str | Path, *, history: Iterable[Any], test: Any, metrics: Mapping[str, Any],
                  feature_spec: Mapping[str, Any], register: str | None, test_set: Mapping[str, Any],
                  config_hash: str | None = None, log_model: bool = True) -> dict[str, Any] | None:
        """Everything of a finished final/transfer run, inside its open run: per-epoch history,
        test metrics, files, feature spec, the model (+ registry and promotion gate).
        Writes OUT/tracking.json when all of it was logged; returns that record (None untracked)."""
        if not self.enabled:
            return None
        out = Path(out)
        self.log_history(history)
        summary = {f"test_{k}": metrics.get(k) for k in ("accuracy", "ua", "macro_f1", "loss")}
        summary.update({k: metrics.get(k) for k in ("best_epoch", "epochs_run", "train_seconds", "seconds_per_epoch", "n")})
        summary.update({f"test_f1_{label}": (values or {}).get("f1") for label, values in (metrics.get("per_class") or {}).items()})
        self.log_metrics(summary)
        self.log_files(out)
        self.log_dict(feature_spec, "feature_spec.json")
        record: dict[str, Any] = {"tracking_uri": getattr(self.tracker, "uri", None), "experiment": getattr(self.tracker, "experiment", None),
                                  "run_id": self.tracker.active_run_id() if self.enabled else None, "config_hash": config_hash}
        if log_model:
            ok, logged = self.call("log the model", self.tracker.log_model, out / "model.pt", registered_name=register,
                                   input_example=test.images[:2])
            if ok and logged is not None:
                record.update(model_uri=logged.model_uri, registered_name=logged.registered_name, version=logged.version)
                if logged.version:
                    print(f"registry: {logged.registered_name} v{logged.version} registered (alias challenger)")
                    self.set_tags({"ser.registered_model": logged.registered_name, "ser.registered_version": logged.version})
                    ok, decision = self.call(f"run the promotion gate of {logged.registered_name} v{logged.version}", self._gate,
                                             logged.registered_name, logged.version, test, float(metrics["macro_f1"]), test_set)
                    if ok:
                        record["promotion"] = decision
                        self.set_tags({"promotion.decision": decision["decision"]})
        if not self.enabled:
            return None
        run_id = record["run_id"]
        print(f"tracked: MLflow run {run_id} (experiment {record['experiment']!r} at {record['tracking_uri']})")
        (out / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        return record

    def already_tracked(self, out: str | Path, config_hash: str) -> str | None:
        """The run id that OUT/tracking.json names for this server, experiment and config, if any."""
        if not self.enabled:
            return None
        path = Path(out) / RECORD_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        same = (record.get("tracking_uri") == getattr(self.tracker, "uri", None)
                and record.get("experiment") == getattr(self.tracker, "experiment", None)
                and record.get("config_hash") == config_hash)
        return record.get("run_id") if same else None

    # -- the promotion gate --------------------------------------------------------

    def _gate(self, name: str, version: str, test: Any, candidate: float, test_set: Mapping[str, Any]) -> dict[str, Any]:
        """The promotion gate (:func:`ser.adapters.champion.gate`) with the champion scored on ``test``
        (this run's held-out rows); a champion that cannot be scored there keeps its place."""
        from ser.adapters import champion, models_uri
        from ser.study import models
        from ser.study.training import evaluate

        described = ", ".join(f"{k}={v}" for k, v in test_set.items())
        rows = len(test)

        def score(champion_version: str) -> champion.Score:
            champ = models.load_bundle(models_uri.resolve(f"models:/{name}/{champion_version}"))
            if tuple(champ.labels) != tuple(test.label_names):
                return champion.Score(None, f"it predicts {list(champ.labels)}, the test set is labelled {list(test.label_names)}")
            if champ.arch.in_size != int(test.images.shape[-1]):
                return champion.Score(None, f"it takes {champ.arch.in_size}x{champ.arch.in_size} images, the test set has "
                                            f"{test.images.shape[-1]}")
            if champ.feature_spec and dict(champ.feature_spec) != test.spec.to_dict():
                return champion.Score(None, f"its feature spec {champ.feature_spec} differs from the test set's {test.spec.to_dict()}")
            meta = champ.meta or {}
            theirs = {k: meta.get(k) for k in ("split", "seed", "test_size")}
            ours = {k: test_set.get(k) for k in theirs}
            note = ""
            if all(v is not None for v in theirs.values()) and theirs != ours:
                note = (f"the champion was trained with {theirs}, this test set comes from {ours}: some rows may be in its "
                        "training data, so its score may be optimistic")
            return champion.Score(evaluate(champ.model, test, device="cpu").macro_f1, how=f"on the same {rows} test rows",
                                  note=note)

        verdict = champion.gate(name, version, candidate, score, tags={"promotion.test_set": f"{described}, rows={rows}"})
        result: dict[str, Any] = {"name": name, "version": str(version), "candidate_macro_f1": candidate, "test_rows": rows,
                                  "decision": verdict.decision, "champion_version": verdict.champion_version,
                                  "champion_macro_f1": verdict.champion, "reason": verdict.reason}
        if verdict.note:
            result["note"] = verdict.note
        if verdict.promoted:
            print(f"promotion: {name} v{version} is now champion ({verdict.reason})")
        else:
            print(f"promotion: {name} v{version} stays challenger; champion remains v{verdict.champion_version} "
                  f"({verdict.reason})")
        if verdict.note:
            print(f"promotion note: {verdict.note}")
        return result
