"""Turn a model reference into a local model.pt bundle path.

Accepted references:

- a local path: ``out/model.pt`` or a directory holding ``model.pt``
- a registry URI: ``models:/ser-english@champion``, ``models:/ser-english/3``
- a run URI: ``runs:/RUN_ID`` (the run's ``model``), ``runs:/RUN_ID/NAME`` (a logged
  model name or an artifact folder), ``runs:/RUN_ID/path/model.pt``
- any other artifact URI MLflow can download (``mlflow-artifacts:/...``, ``s3://...``)

Models logged by :meth:`ser.adapters.tracking.Tracker.log_model` carry the original bundle as
``extra_files/model.pt``; only that file is downloaded, not the exported graph beside
it. Downloads are cached by immutable identity (registry version, run id) under
``$SER_MODEL_CACHE`` (default: ``<tmp>/ser-models``); aliases are resolved to a
version first, so a moved ``champion`` is fetched again.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ser.adapters.tracking import BUNDLE_FILE, BUNDLE_IN_MODEL, unreachable_reason


class ModelURIError(ValueError):
    """A model reference that cannot be resolved, and why."""


def cache_root() -> Path:
    return Path(os.environ.get("SER_MODEL_CACHE") or Path(tempfile.gettempdir()) / "ser-models")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _check_server(uri: str) -> None:
    import mlflow

    tracking = mlflow.get_tracking_uri()
    if not os.environ.get("MLFLOW_TRACKING_URI") and not mlflow.tracking.is_tracking_uri_set():
        raise ModelURIError(f"{uri}: MLFLOW_TRACKING_URI is not set, so there is no registry to ask")
    reason = unreachable_reason(tracking)
    if reason:
        raise ModelURIError(f"{uri}: {reason}")


def _download(repo_download, candidates: list[str], target: Path, uri: str, reuse: bool = True) -> Path:
    """Fetch the first candidate artifact path that exists into ``target`` (atomically).

    ``reuse``: an immutable reference (version, run) already in the cache is not fetched again.
    """
    from mlflow.exceptions import MlflowException

    if reuse and target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        for candidate in candidates:
            try:
                local = Path(repo_download(candidate, tmp))
            except (MlflowException, OSError) as exc:
                errors.append(f"{candidate}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                continue
            if local.is_dir():
                local = local / BUNDLE_FILE
            if local.is_file():
                os.replace(local, target)
                return target
            errors.append(f"{candidate}: no {BUNDLE_FILE} there")
    raise ModelURIError(f"{uri}: no {BUNDLE_FILE} bundle found (tried {'; '.join(errors)}); "
                        "log models with ser.adapters.tracking.Tracker.log_model so the bundle rides along")


def _resolve_models(uri: str, cache: Path) -> Path:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    ref = uri[len("models:/"):].strip("/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        try:
            version = client.get_model_version_by_alias(name, alias).version
        except MlflowException as exc:
            raise ModelURIError(f"{uri}: registered model {name!r} has no version with alias {alias!r} "
                                f"at {client.tracking_uri} ({str(exc).splitlines()[0]})") from None
        pinned, key = f"models:/{name}/{version}", Path("registry") / _safe(name) / f"v{version}"
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        pinned, key = uri, Path("registry") / _safe(name) / f"v{_safe(version)}"
    else:  # models:/m-... (a logged model id: immutable)
        pinned, key = uri, Path("logged") / _safe(ref)
    try:
        repo = ModelsArtifactRepository(pinned)
    except MlflowException as exc:
        raise ModelURIError(f"{uri}: {str(exc).splitlines()[0]}") from None
    return _download(repo.download_artifacts, [BUNDLE_IN_MODEL, BUNDLE_FILE], cache / key / BUNDLE_FILE, uri)


def _resolve_runs(uri: str, cache: Path) -> Path:
    import mlflow

    rest = uri[len("runs:/"):].strip("/")
    run_id, _, path = rest.partition("/")
    if not run_id:
        raise ModelURIError(f"{uri}: expected runs:/RUN_ID[/PATH]")
    path = path or "model"
    if path.endswith(".pt"):
        candidates = [path]
    else:
        candidates = [f"{path}/{BUNDLE_IN_MODEL}", f"{path}/{BUNDLE_FILE}"]

    def fetch(artifact: str, dst: str) -> str:
        return mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/{artifact}", dst_path=dst)

    return _download(fetch, candidates, cache / "runs" / _safe(run_id) / _safe(path) / BUNDLE_FILE, uri)


def resolve(uri: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local path to the model.pt bundle that ``uri`` names (see the module doc)."""
    text = str(uri)
    cache = Path(cache_dir) if cache_dir else cache_root()
    if text.startswith("models:/"):
        _check_server(text)
        return _resolve_models(text, cache)
    if text.startswith("runs:/"):
        _check_server(text)
        return _resolve_runs(text, cache)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text) and not text.startswith("file:"):
        import mlflow

        def fetch(artifact: str, dst: str) -> str:
            return mlflow.artifacts.download_artifacts(artifact_uri=artifact, dst_path=dst)

        base = text.rstrip("/")
        candidates = [base] if base.endswith(".pt") else [f"{base}/{BUNDLE_IN_MODEL}", f"{base}/{BUNDLE_FILE}"]
        return _download(fetch, candidates, cache / "uri" / _safe(base) / BUNDLE_FILE, text, reuse=False)
    path = Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()
    if path.is_dir():
        for candidate in (path / BUNDLE_FILE, path / BUNDLE_IN_MODEL):
            if candidate.is_file():
                return candidate
    if path.is_file():
        return path
    raise ModelURIError(f"{text}: no such model file or directory with {BUNDLE_FILE}")


def clear_cache(cache_dir: str | Path | None = None) -> None:
    shutil.rmtree(Path(cache_dir) if cache_dir else cache_root(), ignore_errors=True)
