"""Compile, run locally, and submit the Kubeflow pipelines of :mod:`ser.kubeflow.pipelines`.

- :func:`compile_pipelines`: both pipelines to YAML (``make compile``).
- :func:`run_local`: one pipeline, unchanged, through kfp's SubprocessRunner
  (``use_venv=False``: every step runs in this venv, where ``ser`` is installed;
  the components are built with ``install_kfp_package=False``, so no step calls
  pip). Kubernetes settings (GPU node pool, secrets) are ignored locally; the
  steps inherit this process's environment (S3 keys, MLflow URI).
- :func:`submit`: a compiled package handed to ``kfp.Client().create_run_from_pipeline_package``.
- :func:`run_demo`: the local demo run of ``ser_study`` with small budgets against
  servers the caller started (``ser demo``).

The pipelines and components ship in the ``ser`` package beside this module, so an
installed wheel runs them as a checkout does.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

PIPELINE_NAMES = ("ser_study", "ser_retrain", "ser_cv")

#: Environment a step uses for S3 and MLflow; parameters named below are filled from it
#: by :func:`run_local` when the caller does not give them.
ENV_PARAMETERS = {"s3_endpoint": "S3_ENDPOINT_URL", "mlflow_uri": "MLFLOW_TRACKING_URI"}


class PipelineError(RuntimeError):
    """A pipeline that cannot be compiled, run or submitted, with the reason."""


# --------------------------------------------------------------------------- loading


def build(name: str, **options: Any) -> Callable:
    """The pipeline ``name`` (ser_study, ser_retrain); ``options`` go to its builder
    (cpu_image, gpu_image, parallelism). No options: the module-level pipeline."""
    from ser.kubeflow import pipelines

    if name not in pipelines.PIPELINES:
        raise PipelineError(f"unknown pipeline {name!r}; expected one of {', '.join(pipelines.PIPELINES)}")
    options = {k: v for k, v in options.items() if v is not None}
    return pipelines.BUILDERS[name](**options) if options else pipelines.PIPELINES[name]


def pipeline_inputs(pipeline_fn: Any) -> dict[str, dict[str, Any]]:
    """{parameter: {"type": ..., "default": ...}} of a pipeline."""
    spec = pipeline_fn.component_spec
    return {name: {"type": inp.type, "default": inp.default} for name, inp in (spec.inputs or {}).items()}


PRESETS: tuple[str, ...] = ("study", "demo", "smoke", "demo-cv", "smoke-cv")


def preset_params(name: str, pipeline_fn: Any = None) -> dict[str, Any]:
    """The parameters of a named budget preset (``src/ser/recipes/pipeline/NAME.yaml``:
    ``study`` carries the study's transfer grid and budgets, ``demo`` and ``smoke`` the
    demo's small ones; ``demo-cv`` and ``smoke-cv`` are ser_cv's), checked against the
    pipeline's inputs."""
    from importlib import resources

    import yaml

    if name not in PRESETS:
        raise PipelineError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    data = yaml.safe_load(resources.files("ser").joinpath(f"recipes/pipeline/{name}.yaml").read_text(encoding="utf-8")) or {}
    inputs = pipeline_inputs(pipeline_fn) if pipeline_fn is not None else {}
    unknown = sorted(set(data) - set(inputs)) if inputs else []
    if unknown:
        raise PipelineError(f"preset {name} sets {', '.join(unknown)}, which this pipeline does not take")
    return dict(data)


def parse_params(items: list[str] | None, pipeline_fn: Any = None) -> dict[str, Any]:
    """``["k=v", ...]`` -> arguments, each value cast to the parameter's type
    (Integer, Float, Boolean, Struct/List as JSON; strings as given)."""
    inputs = pipeline_inputs(pipeline_fn) if pipeline_fn is not None else {}
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PipelineError(f"--param takes KEY=VALUE, got {item!r}")
        if inputs and key not in inputs:
            raise PipelineError(f"unknown parameter {key!r}; the pipeline takes {', '.join(sorted(inputs))}")
        kind = str(inputs.get(key, {}).get("type", "String"))
        try:
            if kind == "Integer":
                out[key] = int(value)
            elif kind == "Float":
                out[key] = float(value)
            elif kind == "Boolean":
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            elif kind in ("Struct", "List", "Dict"):
                out[key] = json.loads(value)
            else:
                out[key] = value
        except (ValueError, json.JSONDecodeError):
            raise PipelineError(f"parameter {key} is {kind}, got {value!r}") from None
    return out


# --------------------------------------------------------------------------- compile


def compile_pipeline(pipeline_fn: Any, path: str | Path) -> Path:
    from kfp import compiler

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_fn, str(path))
    return path


def compile_pipelines(out_dir: str | Path, names: tuple[str, ...] = PIPELINE_NAMES, **options: Any) -> dict[str, Path]:
    """Compile ``names`` to ``out_dir/<name>.yaml``; returns the paths."""
    return {name: compile_pipeline(build(name, **options), Path(out_dir) / f"{name}.yaml") for name in names}


# --------------------------------------------------------------------------- local runs


@dataclass
class LocalRun:
    """Where a local run left its outputs: ``tasks`` maps a task path (``features``,
    ``for-loop-2-iteration-0/train-folds``) to {output name: path or value};
    ``metadata`` to {artifact name: its metadata}. ``cached``: the tasks kfp.local
    answered from its cache (``run_local(cache=...)``) instead of running them; they
    leave no folder in ``run_dir``, and ``tasks`` lists their outputs where the earlier
    run that computed them left them."""

    pipeline: str
    run_dir: Path
    seconds: float
    log: Path | None
    tasks: dict[str, dict[str, str]] = field(default_factory=dict)
    metadata: dict[str, dict[str, dict]] = field(default_factory=dict)
    cached: tuple[str, ...] = ()

    def output(self, task: str, name: str) -> Path:
        try:
            return Path(self.tasks[task][name])
        except KeyError:
            raise KeyError(f"{task}/{name} not among the outputs of {self.run_dir}: {sorted(self.tasks)}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "run_dir": str(self.run_dir), "seconds": round(self.seconds, 1),
                "log": str(self.log) if self.log else None, "tasks": self.tasks, "cached": list(self.cached)}


def collect_outputs(run_dir: str | Path) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, dict]]]:
    """Every task folder of a local run (one holding executor_output.json): its outputs
    (files and folders, and parameter values as text) and its artifacts' metadata
    (what the KFP UI shows: Metrics scalars, ClassificationMetrics matrices ...)."""
    run_dir = Path(run_dir)
    tasks: dict[str, dict[str, str]] = {}
    metadata: dict[str, dict[str, dict]] = {}
    for marker in sorted(run_dir.rglob("executor_output.json")):
        task_dir = marker.parent
        rel = task_dir.relative_to(run_dir).as_posix()
        outputs = {p.name: str(p) for p in sorted(task_dir.iterdir()) if p.name != "executor_output.json"}
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            data = {}
        for key, value in (data.get("parameterValues") or {}).items():
            outputs.setdefault(key, json.dumps(value) if not isinstance(value, str) else value)
        meta = {}
        for key, value in (data.get("artifacts") or {}).items():
            arts = value.get("artifacts") or [{}]
            meta[key] = arts[0].get("metadata", {})
            outputs.setdefault(key, arts[0].get("uri", ""))
        tasks[rel], metadata[rel] = outputs, meta
    return tasks, metadata


def _default_arguments(pipeline_fn: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
    args = dict(arguments)
    inputs = pipeline_inputs(pipeline_fn)
    for param, env in ENV_PARAMETERS.items():
        if param in inputs and param not in args:
            args[param] = os.environ.get(env, "")  # "" = untracked (MLflow) / the step's env (S3)
    return args


@contextlib.contextmanager
def _environ(values: Mapping[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _CacheHits(logging.Filter):
    """Collects the task names kfp.local reports as cache hits.

    kfp.local (``kfp/local/orchestrator/task_executor.py``, ``execute_single_task``)
    says ``logging.info("Task NAME cache hit (key=...); skipping execution.")`` on the
    root logger and nothing else records a hit. Installed on the root logger with its
    level lowered to INFO for the run, this filter notes those records and lets through
    only what the root logger's own level would have passed, so nothing else changes."""

    PATTERN = re.compile(r"^Task (\S+) cache hit")

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level, self.hits = level, []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            match = self.PATTERN.match(str(record.msg))
            if match:
                self.hits.append(match.group(1))
        return record.levelno >= self.level


@contextlib.contextmanager
def _collect_cache_hits():
    root = logging.getLogger()
    hits = _CacheHits(root.level)
    saved = root.level
    root.addFilter(hits)
    root.setLevel(min(saved, logging.INFO) if saved else logging.NOTSET)
    try:
        yield hits.hits
    finally:
        root.setLevel(saved)
        root.removeFilter(hits)


def _earlier_outputs(root: Path, name: str, before: set[str], wanted: list[str]) -> tuple[dict, dict]:
    """Outputs of cache-hit tasks: from the newest earlier run of ``name`` under ``root``
    that ran a task of that name (the run whose outputs kfp.local's cache points to,
    when the cache lives under ``root``, the default)."""
    tasks: dict[str, dict[str, str]] = {}
    metadata: dict[str, dict[str, dict]] = {}
    earlier = sorted((root / p for p in before if p.startswith(f"{name}-") and (root / p).is_dir()), reverse=True)
    for run_dir in earlier:
        if len(tasks) >= len(wanted):
            break
        found, meta = collect_outputs(run_dir)
        for task in wanted:
            for rel in found:
                if rel.split("/")[-1] == task and rel not in tasks:
                    tasks[rel], metadata[rel] = found[rel], meta.get(rel, {})
    return tasks, metadata


def run_local(pipeline_fn: Any, arguments: Mapping[str, Any] | None = None, pipeline_root: str | Path = "local_outputs", *,
              env: Mapping[str, str] | None = None, threads_per_task: int | None = None, log: str | Path | None = None,
              echo: bool = True, cache: bool | str | Path = False) -> LocalRun:
    """Run a pipeline locally with ``kfp.local.SubprocessRunner(use_venv=False)``.

    ``env``: extra environment for the steps (S3 keys, MLflow URI); ``threads_per_task``:
    torch/BLAS threads of each step (steps of a ParallelFor run side by side);
    ``log``: write the runner's (long) output there instead of this process's stdout,
    and print one line per finished task when ``echo``. ``cache``: turn on kfp.local's
    step cache (``local.init(enable_caching=True)``, kfp >= 2.17): True keeps it in
    ``PIPELINE_ROOT/.kfp_cache``, a path puts it there; a step whose component, image,
    command, inputs and env are unchanged, and whose earlier outputs still exist, is
    not run again, and steps built with ``set_caching_options(False)`` always run
    (as on Kubeflow). :attr:`LocalRun.cached` names the steps answered from the cache.
    Raises :class:`PipelineError` naming the failed task (and the log) when a step fails."""
    from kfp import local

    arguments = _default_arguments(pipeline_fn, arguments or {})
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.iterdir()}
    extra = dict(env or {})
    if threads_per_task:
        n = str(int(threads_per_task))
        extra.update({"SER_TORCH_THREADS": n, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n})
    log_path = Path(log).resolve() if log else None
    name = pipeline_fn.name
    t0 = time.perf_counter()
    failure: BaseException | None = None
    saved_print = builtins.print
    hits_context = _collect_cache_hits() if cache else contextlib.nullcontext([])
    with _environ(extra), warnings.catch_warnings(), _restore_print(saved_print), hits_context as hits:
        # the runner warns that a non-"python" image name may lack Python: our images have it
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*", category=RuntimeWarning)
        # cluster-only settings (display names, CPU/memory requests, GPUs) are ignored locally, as intended
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*", category=UserWarning)
        caching = {}
        if cache:
            cache_root = root / ".kfp_cache" if cache is True else Path(cache).resolve()
            caching = {"enable_caching": True, "cache_root": str(cache_root)}
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True, **caching)
        if log_path is None:
            try:
                pipeline_fn(**arguments)
            except Exception as exc:  # kfp raises RuntimeError("Pipeline ... finished with status FAILURE")
                failure = exc
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "w", encoding="utf-8") as fh, _Echo(fh, echo) as sink:
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):  # kfp logs to sys.stdout
                    try:
                        pipeline_fn(**arguments)
                    except Exception as exc:
                        failure = exc
    seconds = time.perf_counter() - t0
    new = sorted((p for p in root.iterdir() if p.name not in before and p.is_dir() and p.name.startswith(f"{name}-")),
                 key=lambda p: p.name)  # <pipeline name>-<timestamp>
    run_dir = new[-1] if new else root
    tasks, metadata = collect_outputs(run_dir) if new else ({}, {})
    cached = tuple(dict.fromkeys(hits))
    if cached:
        old_tasks, old_meta = _earlier_outputs(root, name, before, list(cached))
        for rel, outputs in old_tasks.items():
            tasks.setdefault(rel, outputs)
            metadata.setdefault(rel, old_meta.get(rel, {}))
    result = LocalRun(name, run_dir, seconds, log_path, tasks, metadata, cached)
    if failure is not None:
        where = f"; the runner's output is in {log_path}" if log_path else ""
        tail = _tail(log_path) if log_path else ""
        raise PipelineError(f"local run of {name} failed after {seconds:.0f} s: {failure}{where}\n{tail}".rstrip()) from failure
    return result


@contextlib.contextmanager
def _restore_print(original: Callable):
    """kfp.local indents subprocess output by swapping ``builtins.print``; iterations of a
    ParallelFor running in threads can interleave the swaps and leave it swapped after
    the run (numba, imported later by librosa, then fails on it). Put it back."""
    try:
        yield
    finally:
        builtins.print = original


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class _Echo(io.TextIOBase):
    """A text sink that writes everything to a file and echoes each finished task as one line."""

    def __init__(self, fh: Any, echo: bool) -> None:
        self.fh, self.echo, self._out, self._partial = fh, echo, sys.__stdout__, ""
        # ParallelFor iterations log from threads. Re-entrant, and the echo writes to the
        # real stdout directly: kfp.local swaps builtins.print for one that writes to
        # sys.stdout (this object), so calling print here would re-enter and deadlock.
        self._lock = threading.RLock()

    def __enter__(self) -> "_Echo":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.flush()

    def write(self, text: str) -> int:
        with self._lock:
            self.fh.write(text)
            if self.echo:
                lines = (self._partial + text).split("\n")
                self._partial = lines.pop()
                for line in lines:
                    if "finished with status" in line:
                        clean = re.sub(r"\x1b\[[0-9;]*m", "", line)
                        self._out.write("  " + clean.split(" - INFO - ")[-1].split(" - ERROR - ")[-1].strip() + "\n")
                        self._out.flush()
        return len(text)

    def flush(self) -> None:
        self.fh.flush()


# --------------------------------------------------------------------------- submit


def read_token(token: str | None = None) -> str | None:
    """The KFP bearer token: ``token``, else $KFP_TOKEN, else the file $KF_PIPELINES_SA_TOKEN_PATH names."""
    if token:
        return token.strip()
    if os.environ.get("KFP_TOKEN", "").strip():
        return os.environ["KFP_TOKEN"].strip()
    path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if path and Path(path).is_file():
        return Path(path).read_text(encoding="utf-8").strip() or None
    return None


def submit(host: str, pipeline: str | Any, arguments: Mapping[str, Any] | None = None, experiment: str = "ser",
           namespace: str | None = None, token: str | None = None, *, run_name: str | None = None,
           service_account: str | None = None, enable_caching: bool | None = None, package_dir: str | Path | None = None,
           client_factory: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Compile ``pipeline`` (a name or a pipeline function) and start a run on the KFP
    API at ``host`` through ``kfp.Client().create_run_from_pipeline_package``.

    ``token`` (else $KFP_TOKEN / $KF_PIPELINES_SA_TOKEN_PATH) is sent as a bearer
    token. Returns the run id and URL the client reports. ``client_factory``
    replaces ``kfp.Client`` (tests)."""
    import tempfile

    if not host:
        raise PipelineError("no KFP host: pass --host URL or set KFP_HOST")
    pipeline_fn = build(pipeline) if isinstance(pipeline, str) else pipeline
    arguments = dict(arguments or {})
    unknown = set(arguments) - set(pipeline_inputs(pipeline_fn))
    if unknown:
        raise PipelineError(f"unknown parameters {sorted(unknown)} for {pipeline_fn.name}")
    if client_factory is None:
        import kfp

        client_factory = kfp.Client
    kwargs: dict[str, Any] = {"host": host}
    bearer = read_token(token)
    if bearer:
        kwargs["existing_token"] = bearer
    if namespace:
        kwargs["namespace"] = namespace
    with tempfile.TemporaryDirectory(prefix="ser-submit-") as tmp:
        package = compile_pipeline(pipeline_fn, Path(package_dir or tmp) / f"{pipeline_fn.name}.yaml")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
            client = client_factory(**kwargs)
        run_name = run_name or f"{pipeline_fn.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        try:
            result = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name, experiment_name=experiment, namespace=namespace,
                service_account=service_account, enable_caching=enable_caching)
        except Exception as exc:
            raise PipelineError(f"submitting {pipeline_fn.name} to {host} failed: {type(exc).__name__}: {exc}") from exc
    run_id = getattr(result, "run_id", None)
    url = f"{host.rstrip('/')}/#/runs/details/{run_id}" if run_id else None
    return {"pipeline": pipeline_fn.name, "run_id": run_id, "run_name": run_name, "experiment": experiment, "url": url,
            "arguments": arguments}


# --------------------------------------------------------------------------- demo


#: Files per emotion of the demo corpora (7 English classes, 5 Greek ones).
DEMO_ENGLISH_PER_CLASS = 16
DEMO_GREEK_PER_CLASS = 10

#: Demo corpora: the synthetic corpus in RAVDESS and AESDD layouts (NOT real speech).
DEMO_DATA_BUCKET = "ser-data"
DEMO_MODEL_BUCKET = "ser-models"
DEMO_ENGLISH_PREFIX = "corpora/synthetic-ravdess"
DEMO_GREEK_PREFIX = "corpora/synthetic-aesdd"


def upload_demo_corpora(store: Any, workdir: str | Path, *, bucket: str = DEMO_DATA_BUCKET, english_per_class: int = DEMO_ENGLISH_PER_CLASS,
                        greek_per_class: int = DEMO_GREEK_PER_CLASS, seed: int = 0,
                        english: tuple[str, str | Path] | None = None) -> dict[str, str]:
    """Generate the synthetic corpora (RAVDESS and AESDD layouts) under ``workdir`` and
    upload them to ``s3://bucket/corpora/synthetic-<layout>-<per class>x-seed<seed>/``
    (one prefix per corpus made, so a rerun with other sizes never mixes files);
    returns the pipeline's corpora parameters.

    ``english`` = (corpus name, folder): a real English corpus as distributed (what
    ``ser fetch`` leaves) goes to ``s3://bucket/corpora/<name>/`` instead of the
    synthetic one; the Greek side stays synthetic (AESDD is not public)."""
    from ser.data.corpora import synthetic

    workdir = Path(workdir)
    store.ensure_bucket(bucket)
    prefixes = {}
    layouts = [("aesdd", DEMO_GREEK_PREFIX, greek_per_class)]
    if english is None:
        layouts.insert(0, ("ravdess", DEMO_ENGLISH_PREFIX, english_per_class))
    else:
        name, folder = english[0], Path(english[1])
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such corpus folder (get it with `ser fetch {name} {folder}`)")
        prefixes["english"] = f"corpora/{name}"
        store.upload_dir(folder, bucket, prefixes["english"], progress=True)
    for layout, base, per_class in layouts:
        tag = f"{per_class}x-seed{seed}"
        folder = workdir / "corpora" / f"synthetic-{layout}-{tag}"
        if not (folder / "SYNTHETIC.txt").is_file():
            synthetic.generate(folder, layout=layout, per_class=per_class, seed=seed)
        prefixes[layout] = f"{base}-{tag}"
        store.upload_dir(folder, bucket, prefixes[layout], progress=False)
    en = f"{english[0]}={prefixes['english']}" if english else f"synthetic={prefixes['ravdess']}"
    return {"data_bucket": bucket, "english_corpora": en, "greek_corpora": f"synthetic={prefixes['aesdd']}"}


def demo_arguments(corpora: Mapping[str, str], budgets: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """ser_study arguments of the demo: the synthetic corpora, no study selection, the
    synthetic English corpus augmented in place of TESS, and ``budgets`` over the demo preset."""
    args: dict[str, Any] = {**preset_params("demo"), "select": "all", "augment_corpora": "synthetic-ravdess", "augment_mode": "replace",
                            "model_bucket": DEMO_MODEL_BUCKET, "model_name": "ser-english", "mlflow_experiment": "ser-demo"}
    args.update(corpora)
    args.update(budgets or {})
    args.update(extra)
    return args


def run_demo(workdir: str | Path, s3: Any, mlflow_uri: str | None = None, budgets: Mapping[str, Any] | None = None, *,
             parallelism: int = 2, echo: bool = True, english_per_class: int = DEMO_ENGLISH_PER_CLASS,
             greek_per_class: int = DEMO_GREEK_PER_CLASS, english: tuple[str, str | Path] | None = None) -> dict[str, Any]:
    """Run ``ser_study`` locally on the synthetic corpora with small budgets
    (``english`` = (name, folder): a real English corpus instead, TESS-style
    augmentation then applying to TESS rows only, as in the study).

    ``s3``: a running :class:`ser.ops.services.LocalS3` (or anything with ``env()`` and
    ``store()``); ``mlflow_uri``: a running MLflow server, or None for no tracking.
    The corpora are generated and uploaded first; the winner is published to
    ``s3://ser-models/ser-english/``. Returns where every artifact landed:
    ``{"run_dir", "log", "seconds", "artifacts": {...}, "published": {...}, "tasks": {...}}``."""
    workdir = Path(workdir).resolve()
    store = s3.store()
    corpora = upload_demo_corpora(store, workdir, english_per_class=english_per_class, greek_per_class=greek_per_class, english=english)
    store.ensure_bucket(DEMO_MODEL_BUCKET)
    env = dict(s3.env())
    env["MLFLOW_TRACKING_URI"] = mlflow_uri or ""
    arguments = demo_arguments(corpora, budgets, s3_endpoint=env["S3_ENDPOINT_URL"], mlflow_uri=mlflow_uri or "",
                               **({"augment_corpora": "tess"} if english else {}))
    pipeline_fn = build("ser_study", parallelism=parallelism)
    threads = max(1, (os.cpu_count() or 2) // max(1, parallelism))
    run = run_local(pipeline_fn, arguments, workdir / "local_outputs", env=env, threads_per_task=threads,
                    log=workdir / "logs" / "ser_study.log", echo=echo)
    return summarize_study(run, pipeline_fn)


def run_demo_cv(workdir: str | Path, s3: Any, mlflow_uri: str | None = None, budgets: Mapping[str, Any] | None = None, *,
                echo: bool = True, english_per_class: int = DEMO_ENGLISH_PER_CLASS,
                english: tuple[str, str | Path] | None = None) -> dict[str, Any]:
    """Run ``ser_cv`` locally on the demo's English corpus (synthetic, or ``english`` =
    (name, folder)) with ``budgets`` over the demo-cv preset (the plus recipe, leave one
    speaker out). Returns the run's outputs, the fold summary (``cv_scores``) and where
    the ensemble of fold models landed (``artifacts["ensemble"]``)."""
    workdir = Path(workdir).resolve()
    corpora = upload_demo_corpora(s3.store(), workdir, english_per_class=english_per_class, greek_per_class=2, english=english)
    env = {**s3.env(), "MLFLOW_TRACKING_URI": mlflow_uri or ""}
    arguments = {**preset_params("demo-cv"), **(budgets or {}), "data_bucket": corpora["data_bucket"], "corpora": corpora["english_corpora"],
                 "s3_endpoint": env["S3_ENDPOINT_URL"], "mlflow_uri": mlflow_uri or "", "mlflow_experiment": "ser-demo"}
    run = run_local(build("ser_cv"), arguments, workdir / "local_outputs", env=env, threads_per_task=max(1, os.cpu_count() or 1),
                    log=workdir / "logs" / "ser_cv.log", echo=echo)
    results, ensemble = run.output("cross-validate", "results"), run.output("cross-validate", "ensemble")
    data = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    return {**run.to_dict(), "artifacts": {"cv_results": str(results), "ensemble": str(ensemble)},
            "cv_scores": {"recipe": data["recipe"], "protocol": data["protocol"], **data["summary"]}}


def summarize_study(run: LocalRun, pipeline_fn: Any = None) -> dict[str, Any]:
    """The key artifacts of a local ser_study run (by the pipeline's own names for them,
    ``named_outputs``), its scores and what was published."""
    artifacts = {}
    for key, (task, output) in (pipeline_fn or build("ser_study")).named_outputs.items():
        path = run.tasks.get(task, {}).get(output)
        if path:
            artifacts[key] = path
    out: dict[str, Any] = {**run.to_dict(), "artifacts": artifacts}
    for key in ("published", "greek_published"):
        published = Path(artifacts.get(key, "")) / "published.json"
        if published.is_file():
            out[key] = json.loads(published.read_text(encoding="utf-8"))
    for key in ("english_evaluation", "greek_evaluation"):
        metrics = Path(artifacts.get(key, "")) / "metrics.json"
        if metrics.is_file():
            data = json.loads(metrics.read_text(encoding="utf-8"))
            out[key.replace("evaluation", "scores")] = {k: data.get(k) for k in ("accuracy", "macro_f1", "loss")}
    return out


def format_summary(summary: Mapping[str, Any]) -> str:
    """Lines for a person: where each artifact landed, the scores, the publication."""
    lines = [f"{summary.get('pipeline', 'ser_study')} ran locally in {summary.get('seconds', 0):.0f} s; run folder {summary.get('run_dir')}"]
    if summary.get("log"):
        lines.append(f"  runner log: {summary['log']}")
    for key, path in summary.get("artifacts", {}).items():
        lines.append(f"  {key:<20} {path}")
    for key in ("english_scores", "greek_scores"):
        if key in summary:
            s = summary[key]
            lines.append(f"  {key:<20} accuracy {100 * (s.get('accuracy') or 0):.1f}%, macro F1 {100 * (s.get('macro_f1') or 0):.1f}% (synthetic data)")
    cv = summary.get("cv_scores")
    if cv:
        lines.append(f"  {cv['recipe']} recipe, {cv['protocol']}: " + ", ".join(
            f"{name} {100 * cv[key]['mean']:.1f} +- {100 * cv[key]['std']:.1f}%" for key, name in (("ua", "UA"), ("wa", "WA"), ("macro_f1", "macro F1")))
            + " on voices each fold model never heard")
    for key in ("published", "greek_published"):
        pub = summary.get(key)
        if pub:
            lines.append(f"  published {pub.get('name')} {pub.get('version')} -> {pub.get('uri')}"
                         + (f"; champion -> {pub['champion_uri']}" if pub.get("champion_uri") else " (not promoted)"))
    return "\n".join(lines)
