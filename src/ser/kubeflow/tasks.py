"""The library side of the Kubeflow components: one function per pipeline step.

A component body (``components/*.py``) is serialised into the pipeline YAML and runs
in the ``ser`` image on its own (not as part of its module); so each body is a few
lines that call one function here with plain paths and values, then hand the
returned numbers to KFP (Metrics, ClassificationMetrics, HTML, Markdown).  These
functions know nothing of KFP: they read and write folders, so they are tested,
and usable, without it.

Paths inside step outputs: a table stores the audio paths *relative to the
artifact folder that holds the file* (``corpora/...`` in the ingest output,
``audio/...`` in the augment output), and :func:`read_table` resolves them against
the folders a step was given.  Artifact folders therefore stay valid wherever KFP
downloads them (``/minio/...`` on a cluster, ``local_outputs/...`` locally).

S3 (raw corpora in, published models out) goes through :mod:`ser.adapters.store` with the
endpoint and keys of the environment only (KFP: the secret
``mlpipeline-minio-artifact``; locally: the parent process).  MLflow tracking is
optional: with ``MLFLOW_TRACKING_URI`` unset, or the server down, steps still run.
The champion, though, is recorded only in MLflow's registry (:mod:`ser.adapters.champion`):
without MLflow, nothing is promoted and models are archived as versions only.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ser import files
from ser.files import read_json, write_json
from ser.steps import feature_file

TABLE = "table.csv"
PROBLEMS = "problems.csv"
SUMMARY = "summary.json"


# --------------------------------------------------------------------------- small helpers


log = logging.getLogger(__name__)


def parse_pairs(text: str, what: str = "corpora") -> list[tuple[str, str]]:
    """``"ravdess=corpora/ravdess, tess=corpora/tess"`` -> [(name, prefix), ...]."""
    pairs = []
    for item in (text or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{what}: expected NAME=PREFIX items separated by commas, got {item!r}")
        pairs.append((name.strip(), value.strip()))
    if not pairs:
        raise ValueError(f"{what}: nothing given (expected NAME=PREFIX[,NAME=PREFIX ...])")
    return pairs


def parse_list(text: str | Sequence[Any], cast: Any = str) -> list[Any]:
    """``"mel, chroma"`` or ``["mel", "chroma"]`` -> ["mel", "chroma"] (ints via cast=int)."""
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        item = str(item).strip()
        if item:
            out.append(cast(float(item)) if cast is int else cast(item))
    return out


def single_threaded_workers() -> None:
    """Worker processes (feature extraction) each get one BLAS/OpenMP thread: N workers x
    N threads on N cores is many times slower than N x 1 (measured: a 30 x 1025 mel
    projection took 12 ms instead of 0.1 ms on 2 busy cores). Set before workers start."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def torch_threads() -> int:
    """Set torch's intra-op threads from ``SER_TORCH_THREADS`` (unset: leave torch's default)."""
    import torch

    wanted = os.environ.get("SER_TORCH_THREADS", "").strip()
    if wanted:
        torch.set_num_threads(max(1, int(wanted)))
    return torch.get_num_threads()


def html_page(title: str, images: Sequence[str | Path] = (), body: str = "") -> str:
    """A self-contained HTML page (PNG images inlined) for a KFP HTML artifact."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h3>{html.escape(title)}</h3>", body]
    for image in images:
        data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        parts.append(f"<div><img alt='{html.escape(Path(image).name)}' src='data:image/png;base64,{data}'/></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    from ser.study import report

    return report.markdown_table(rows, columns) if rows else "(no rows)\n"


# --------------------------------------------------------------------------- tables in artifacts


def write_table(rows: Iterable[Mapping[str, Any]], folder: str | Path, columns: Sequence[str], name: str = TABLE) -> Path:
    """Write rows to ``folder/name`` with paths under ``folder`` made relative to it."""
    from ser.data import tables

    folder = Path(folder)
    out = [{**row, "path": files.relative_to(str(row["path"]), folder)} for row in rows]
    return tables.write_rows(out, folder / name, columns)


def read_table(folder: str | Path, roots: Sequence[str | Path] = (), name: str = TABLE) -> list[dict]:
    """Rows of ``folder/name`` with each relative path resolved against ``folder`` and
    then ``roots`` (the other artifact folders the table refers to), first hit wins."""
    from ser.data import tables

    return tables.read_rows(Path(folder) / name, roots=(folder, *roots))


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    from ser.data import augment, corpora

    cols = list(corpora.COLUMNS)
    if any(k in r for r in rows for k in augment.AUGMENT_COLUMNS):
        cols += list(augment.AUGMENT_COLUMNS)
    return cols


# --------------------------------------------------------------------------- ingest (S3 -> table)


def data_fingerprint(data_bucket: str, corpora: str, store: Any = None) -> str:
    """A digest of the objects under the corpus prefixes (key, size, ETag): what KFP's
    cache key of the ingest step should depend on. The bucket's name and prefixes stay
    the same when its content changes, so the pipeline computes this in a small uncached
    step and hands it to ingest, which is then cached exactly while the data is unchanged."""
    import hashlib

    from ser.adapters.store import S3Store

    store = store or S3Store.from_env()
    digest = hashlib.sha256()
    for name, prefix in parse_pairs(corpora):
        folder = prefix.strip("/") + "/"
        with store._op("list", data_bucket, folder):
            objects = sorted((o.object_name, int(o.size or 0), (o.etag or "").strip('"'))
                             for o in store.client.list_objects(data_bucket, prefix=folder, recursive=True) if not o.is_dir)
        if not objects:
            raise FileNotFoundError(f"s3://{data_bucket}/{folder} holds no objects (corpus {name})")
        digest.update(json.dumps([name, prefix, objects]).encode())
    return digest.hexdigest()[:16]


def ingest(data_bucket: str, corpora: str, out_dir: str | Path, select: str = "all", seed: int = 0,
           fingerprint: str = "") -> dict[str, Any]:
    """Download each corpus prefix from S3 and scan it into an utterance table
    (:func:`ser.steps.ingest`).

    ``fingerprint`` (from :func:`data_fingerprint`, computed before this step): the data
    must still be what it was then, else ValueError (it changed while the pipeline ran,
    and a cached result would be filed under the wrong key).

    ``corpora``: ``NAME=PREFIX`` pairs, e.g. ``"ravdess=corpora/ravdess,tess=corpora/tess"``
    or ``"synthetic=corpora/synthetic-ravdess"``. Writes ``out_dir/corpora/NAME/...``
    (the files), ``out_dir/table.csv`` and ``out_dir/problems.csv``, paths relative to
    ``out_dir``. S3 errors (wrong key, missing bucket) raise
    :class:`ser.adapters.store.StoreError` naming the endpoint and bucket.
    """
    from ser import steps
    from ser.adapters.store import S3Store
    from ser.data import corpora as corpora_mod

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = parse_pairs(corpora)
    req = steps.IngestRequest(corpus=tuple(f"{name}={out / 'corpora' / name}" for name, _ in pairs), out=out / TABLE,
                              problems=out / PROBLEMS, select=select, seed=seed, relative=True, progress=False)  # names checked before any download
    store = S3Store.from_env()
    now = data_fingerprint(data_bucket, corpora, store)
    if fingerprint and fingerprint != now:
        raise ValueError(f"the data under s3://{data_bucket} changed since the pipeline fingerprinted it "
                         f"({fingerprint} -> {now}); run the pipeline again")
    downloaded = {}
    t0 = time.perf_counter()
    for name, prefix in pairs:
        fetched = store.download_prefix(data_bucket, prefix, out / "corpora" / name, progress=False)
        downloaded[name] = {"uri": f"s3://{data_bucket}/{prefix.strip('/')}", "files": len(fetched)}
    result = steps.ingest(req)
    labels = sorted({r.corpus for r in result.rows})
    info = {
        "rows": len(result.rows),
        "problems": len(result.problems),
        "corpora": downloaded,
        "labels": labels,
        "select": select,
        "fingerprint": now,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(out / SUMMARY, info)
    columns, counts = result.counts()
    info["markdown"] = (
        f"### Utterance table: {len(result.rows)} rows, {len(result.problems)} files not used\n\n"
        + "".join(f"- {n}: {d['files']} files from `{d['uri']}`\n" for n, d in downloaded.items())
        + "\n" + markdown_table(counts, columns)
        + ("\n**Synthetic data** (not real speech).\n" if any(corpora_mod.is_synthetic(c) for c in labels) else "")
    )
    return info


# --------------------------------------------------------------------------- augment


def augment(table_dir: str | Path, out_dir: str | Path, corpora: str = "tess", mode: str = "replace", copies: int = 1, seed: int = 0) -> dict[str, Any]:
    """Perturbed copies of the rows of ``corpora`` (the study: TESS, mode replace).

    Writes ``out_dir/audio/*.wav`` and ``out_dir/table.csv`` (the originals, whose
    paths refer to ``table_dir``, plus the copies)."""
    from ser.data import augment as augment_mod

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_table(table_dir)
    wanted = tuple(parse_list(corpora))
    # synthetic corpora are labelled "synthetic-<layout>": let "tess" also name "synthetic-tess"
    labels = {r["corpus"] for r in rows}
    wanted = tuple(c for c in labels if c in wanted or c.removeprefix("synthetic-") in wanted or c in {f"synthetic-{w}" for w in wanted})
    new_rows, problems = augment_mod.augment_rows(rows, out / "audio", mode=mode, copies=int(copies), seed=int(seed), corpora=wanted, progress=False)
    all_rows = [*rows, *new_rows]
    table_root = Path(table_dir)
    # originals keep paths relative to the ingest folder, copies relative to this one
    out_rows = [{**r, "path": files.relative_to(r["path"], table_root) if not r.get("augmented_from") else r["path"]} for r in all_rows]
    write_table(out_rows, out, table_columns(all_rows))
    write_table([{"path": p, "reason": r} for p, r in problems], out, ("path", "reason"), PROBLEMS)
    info = {"originals": len(rows), "copies": len(new_rows), "corpora": list(wanted), "mode": mode, "problems": len(problems)}
    write_json(out / SUMMARY, info)
    info["markdown"] = (
        f"### Augmentation ({mode})\n\n{len(new_rows)} perturbed copies of "
        f"{', '.join(wanted) or 'no corpus'} ({len(rows)} originals); copies stay on the training side of every split.\n"
        + ("\nNo rows of the requested corpora: nothing augmented.\n" if not new_rows else "")
    )
    return info


# --------------------------------------------------------------------------- features


def features(table_dir: str | Path, out_dir: str | Path, kinds: str = "mel", sizes: str = "60", labels: str = "english", roots: Sequence[str | Path] = (), workers: int | None = None, rate: int | None = 16000) -> dict[str, Any]:
    """One feature set per (kind, size) in ``out_dir/<kind>-<size>.npz``
    (:func:`ser.steps.featurize`; the whisper encoder's sets are named by its width,
    whatever size was asked)."""
    import tempfile

    from ser import steps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    single_threaded_workers()
    cache = Path(tempfile.mkdtemp(prefix="ser-features-"))  # scratch, outside the artifact (KFP uploads only out_dir)
    made, lines = {}, []
    t0 = time.perf_counter()
    try:
        for kind in parse_list(kinds):
            for size in parse_list(sizes, int):
                result = steps.featurize(steps.FeaturizeRequest(table=Path(table_dir) / TABLE, out=out, feature=kind, size=size, labels=labels,
                                                                rate=rate, cache=cache, workers=workers, roots=(Path(table_dir), *roots), progress=False))
                fs, name = result.features, result.path.name
                if name in made:
                    continue
                problems = len(result.report.problems)
                made[name] = {"n": len(fs), "classes": fs.class_counts(), "problems": problems}
                lines.append({"file": name, "images": len(fs), "augmented": int((~fs.is_original).sum()), "problems": problems})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    info = {"labels": labels, "sets": made, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / SUMMARY, info)
    info["markdown"] = f"### Feature sets ({labels})\n\n" + markdown_table(lines, ["file", "images", "augmented", "problems"])
    return info


def load_features(features_dir: str | Path, kind: str | None = None, size: int | None = None):
    """The feature set of ``kind``/``size`` in a features folder (the only one if None)."""
    from ser.data.dataset import FeatureSet

    folder = Path(features_dir)
    if kind is None or size is None:
        sets = sorted(folder.glob("*.npz"))
        if len(sets) != 1:
            raise ValueError(f"{folder}: {len(sets)} feature sets; say which kind and size")
        return FeatureSet.load(sets[0])
    path = folder / feature_file(kind, size)
    if not path.is_file():
        have = ", ".join(p.name for p in sorted(folder.glob("*.npz"))) or "none"
        raise FileNotFoundError(f"{path.name} not in the features step output (have: {have}); add {kind} / {int(size)} to the features step")
    return FeatureSet.load(path)


def feature_keys(features_dir: str | Path) -> list[tuple[str, int]]:
    """(kind, size) of every feature set in a features folder, sorted."""
    keys = []
    for path in Path(features_dir).glob("*.npz"):
        kind, _, size = path.stem.rpartition("-")
        if kind and size.isdigit():
            keys.append((kind, int(size)))
    return sorted(keys)


def label_names(features_dir: str | Path) -> tuple[str, ...]:
    """The label set of a features folder, read without loading the images."""
    import numpy as np

    files = sorted(Path(features_dir).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{features_dir}: no feature sets (*.npz)")
    with np.load(files[0], allow_pickle=False) as data:
        return tuple(str(x) for x in data["label_names"])


# --------------------------------------------------------------------------- search: recipe, plan, score, rank


RECIPE_FILE = "recipe.json"


def resolve_recipe(recipe: str, out_dir: str | Path, *, seed: int = -1, folds: int = 0, trials: Sequence[int] = (0, 0, 0),
                   search_epochs: int = 0, final_stage_epochs: int = 0, parent_run: str = "") -> dict[str, Any]:
    """The search recipe with the pipeline's budgets applied, written as JSON.

    ``recipe``: a shipped recipe name (study, demo) or YAML text. ``trials``: vectors
    per combination (stages 1-2) and per parent (stage 3), 0 keeps the recipe's;
    ``search_epochs``: maximum epochs of the early-stopped stages; ``final_stage_epochs``:
    the fixed epochs of the final stage; ``seed`` < 0 and ``folds`` 0 keep the recipe's.
    ``parent_run``: the MLflow run the fold steps nest under, kept beside the recipe.
    """
    from dataclasses import replace

    import yaml

    from ser.study import recipes, search_space, stopping

    if recipe.strip() in recipes.BUILTIN_RECIPES:
        base = recipes.load_recipe(recipe.strip())
    else:
        data = yaml.safe_load(recipe)
        if not isinstance(data, Mapping):
            raise search_space.SearchError(f"recipe must be a shipped name ({', '.join(recipes.BUILTIN_RECIPES)}) or YAML text of a mapping")
        base = recipes.Recipe.from_dict(data, source="pipeline parameter")
    stages = dict(base.stages)
    random_or_perturb = [n for n in sorted(stages) if stages[n].kind != "final"]
    for n, k in zip(random_or_perturb, list(trials) + [0] * len(random_or_perturb)):
        if int(k) > 0:
            stages[n] = stages[n].with_trials(int(k))
    for n, st in stages.items():
        epochs = int(final_stage_epochs) if st.kind == "final" else int(search_epochs)
        if epochs > 0:
            stages[n] = replace(st, epochs=epochs)
    changes: dict[str, Any] = {"stages": stages}
    if int(seed) >= 0:
        changes["seed"] = int(seed)
    if int(folds) > 0:
        changes["folds"] = int(folds)
    resolved = replace(base, **changes)
    out = Path(out_dir)
    data = {**resolved.to_dict(), "source": resolved.source, "hash": resolved.hash()}
    write_json(out / RECIPE_FILE, data)
    write_json(out / "tracking.json", {"parent_run": parent_run or ""})
    (out / "recipe.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(resolved.to_dict())), sort_keys=False), encoding="utf-8")
    lines = [{"stage": n, "kind": st.kind, "vectors": st.vectors if st.kind != "final" else f"best {st.take}",
              "epochs": st.max_epochs, "rules": stopping.rules_name(st.rules)} for n, st in sorted(stages.items())]
    return {"name": resolved.name, "hash": data["hash"], "seed": resolved.seed, "folds": resolved.folds, "stages": sorted(stages),
            "markdown": f"### Search recipe `{resolved.name}` (hash {data['hash']})\n\n{resolved.folds}-fold CV, seed {resolved.seed}, "
                        f"{resolved.split} split, test size {resolved.test_size}\n\n" + markdown_table(lines)}


def load_recipe(recipe_dir: str | Path):
    from ser.study import recipes

    data = read_json(Path(recipe_dir) / RECIPE_FILE)
    source = data.pop("source", "")
    data.pop("hash", None)
    return recipes.Recipe.from_dict(data, source=source)


def plan_stage(recipe_dir: str | Path, stage: int, features_dir: str | Path, ranking_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The parameter vectors stage ``stage`` scores (the items of the pipeline's
    ParallelFor): new random draws, perturbations of the best of ``ranking_dir``, or
    the best of it again (final stage), exactly as :func:`ser.study.search.run_stage` picks them."""
    from ser.study import ranking, search, search_space

    recipe = load_recipe(recipe_dir)
    st = recipe.stage(int(stage))
    available = feature_keys(features_dir)
    previous = ranking.load_ranking(ranking_dir) if ranking_dir else None
    n_classes = functools.cache(lambda: len(label_names(features_dir)))
    vectors, combos, _missing = search.plan_vectors(st, recipe, available, lambda _key: n_classes(), previous)
    if st.kind == "random" and not combos:
        raise search_space.SearchError(f"stage {st.number}: none of its combinations has a feature set (given: {available}); "
                                 "add the kinds/sizes to the features step")
    if not vectors:
        raise search_space.SearchError(f"stage {st.number}: no vectors to score")
    return [{"stage": st.number, "id": v.id, "vector": v.to_dict()} for v in vectors]


def _search_rows(features_dir: str | Path, key: tuple[str, int], recipe) -> tuple[Any, Any]:
    """(feature set of ``key``, its training rows under the search's one 80/20 split):
    :func:`ser.study.search.search_split` needs the reference set (the first by kind, size)
    and the set itself only."""
    from ser.study import search

    keys = feature_keys(features_dir)
    fs = load_features(features_dir, *key)
    sets = {key: fs}
    if keys and keys[0] != key:
        sets[keys[0]] = load_features(features_dir, *keys[0])
    train_idx, split = search.search_split(sets, recipe.split, recipe.seed, recipe.test_size)
    return fs, train_idx[key], split


def train_folds(features_dir: str | Path, recipe_dir: str | Path, item: Mapping[str, Any], out_dir: str | Path, *,
                device: str = "auto", parent_run: str | None = None) -> dict[str, Any]:
    """k-fold cross-validation of one parameter vector with the stage's early stopping
    (:func:`ser.study.search.score_vector`). Writes ``out_dir/result.json`` (ranking row and
    fold details), ``out_dir/work/<id>/fold<k>.json`` and a learning-curve PNG per fold."""
    from ser.study import ranking, report, search, search_space

    torch_threads()
    recipe = load_recipe(recipe_dir)
    st = recipe.stage(int(item["stage"]))
    vector = search_space.Vector.from_dict(item["vector"])
    fs, idx, split = _search_rows(features_dir, vector.key, recipe)
    out = Path(out_dir)
    if parent_run is None:
        tracking_file = Path(recipe_dir) / "tracking.json"
        parent_run = read_json(tracking_file).get("parent_run", "") if tracking_file.is_file() else ""
    with tracking_run(parent_run, f"stage {st.number} vector {vector.id}", "stage", {"stage": st.number, "vector_id": vector.id},
                      record_dir=out) as tracker:
        result = search.score_vector(vector, fs, idx, st.rules, folds=recipe.folds, seed=recipe.seed, epochs=st.max_epochs,
                                     workdir=out / "work", device=device, tracker=tracker, protocol=recipe.split, score_at=recipe.score_at,
                                     eval_every=recipe.eval_every, checkpoint_every=max(recipe.checkpoint_every, 5), progress=False,
                                     stage=st.number)
    f1, acc = result.macro_f1, result.accuracy
    result.qualified = bool(result.complete and not math.isnan(f1) and f1 >= st.thresholds[0] and acc >= st.thresholds[1])
    row = result.to_row()
    write_json(out / "result.json", {"row": row, "result": result.to_dict(), "split": split})
    curves = []
    for fold in result.folds:
        if fold.history:
            curves.append(report.plot_learning_curve(fold.history, out / f"fold{fold.fold}.png",
                                                     title=f"vector {vector.id} fold {fold.fold} ({fold.stopped_by})", best_epoch=fold.best_epoch))
    summary = {k: row.get(k) for k in ("id", "stage", "cnn", "feature", "N", "macro_f1", "macro_f1_std", "accuracy", "accuracy_std",
                                        "val_loss", "epochs", "stopped_by", "abandoned", "qualified", "seconds")}
    summary["curves"] = [str(c) for c in curves]
    summary["markdown"] = ranking.ranking_markdown([row], title=f"Stage {st.number}, vector {vector.id}")
    return summary


def rank_stage(recipe_dir: str | Path, stage: int, result_dirs: Sequence[str | Path], out_dir: str | Path,
               ranking_dir: str | Path | None = None) -> dict[str, Any]:
    """The ranking after stage ``stage``: the scored vectors (merged with the previous
    ranking where the stage says so), written as ``ranking.csv``/``ranking.md`` (and
    ``winner.json``/``winner_meta.json`` after the final stage) by :func:`ser.study.search.write_stage`."""
    from ser.study import ranking, search, search_space

    recipe = load_recipe(recipe_dir)
    st = recipe.stage(int(stage))
    rows, results, split = [], [], {}
    for folder in result_dirs:
        data = read_json(Path(folder) / "result.json")
        rows.append(data["row"])
        results.append(data["result"])
        split = data.get("split") or split
    if not rows:
        raise search_space.SearchError(f"stage {st.number}: no scored vectors to rank")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scored = out / f"stage{st.number}-scored.csv"  # through the ranking CSV: the table's own types (NaN, ints, booleans)
    scored.write_text(ranking.ranking_csv(rows), encoding="utf-8")
    rows = ranking.load_ranking(scored)
    scored.unlink()
    previous = ranking.load_ranking(ranking_dir) if ranking_dir else []
    if st.kind == "perturb" or (st.kind == "random" and st.merge):
        rows = list(previous) + rows
    ranked = ranking.sort_ranking(rows)
    winner = ranked[0] if st.kind == "final" else None
    meta = {"recipe": recipe.name, "recipe_source": recipe.source, "recipe_hash": recipe.hash(), "seed": recipe.seed,
            "folds": recipe.folds, "split": split, "score_at": recipe.score_at}
    search.write_stage(search.StageResult(st, [], ranked, [], winner), out, meta)
    write_json(out / f"stage{st.number}" / "vectors.json", {"results": results})
    write_json(out / RUNS_FILE, {"runs": recorded_runs(ranking_dir, *result_dirs)})
    listed = [r for r in ranked if r.get("qualified")]
    top = ranked[0]
    return {"stage": st.number, "vectors": len(results), "ranked": len(ranked), "listed": len(listed),
            "best_id": top["id"], "best_macro_f1": float(top.get("macro_f1") or 0.0), "best_accuracy": float(top.get("accuracy") or 0.0),
            "winner": winner is not None, "markdown": (out / "ranking.md").read_text(encoding="utf-8")}


# --------------------------------------------------------------------------- tracking (optional)


#: A tracked step's MLflow run, kept in its output folder (see :func:`link_runs`).
RUN_FILE = "mlflow_run.json"
#: The search's MLflow runs, carried from ranking to ranking.
RUNS_FILE = "mlflow_runs.json"


class tracking_run:
    """``with tracking_run(parent, name, kind, tags) as tracker``: an MLflow run for one
    step, child of the pipeline's run ``parent`` (a run id; "" for none), when
    MLFLOW_TRACKING_URI names a server that answers; else a NullTracker (never fails).

    ``record_dir``: where the run id is written (``mlflow_run.json``). Cacheable
    pipeline steps take no parent (a per-run id in their inputs would defeat KFP's
    cache); an uncached step links their recorded runs afterwards (:func:`link_runs`)."""

    def __init__(self, parent: str, name: str, kind: str = "stage", tags: Mapping[str, Any] | None = None, experiment: str | None = None,
                 record_dir: str | Path | None = None) -> None:
        self.parent, self.name, self.kind, self.tags, self.experiment = parent or None, name, kind, dict(tags or {}), experiment
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self._stack = None

    def __enter__(self):
        from contextlib import ExitStack

        from ser.adapters import tracking

        tracker = tracking.Tracker.from_env(experiment=self.experiment)
        if tracker.enabled:
            self._stack = ExitStack()
            try:
                active = self._stack.enter_context(tracker.run(self.name, self.kind, tags=self.tags, parent=self.parent,
                                                               system_metrics=False))  # the step's own runs sample them
            except Exception as exc:  # a parent from another server, a server that went away: go on untracked
                self._stack = None
                log.warning("tracking skipped: cannot open run %r (%s)", self.name, exc)
                return tracking.NullTracker(str(exc))
            if self.record_dir is not None:
                write_json(self.record_dir / RUN_FILE, {"run_id": active.info.run_id, "name": self.name, "tracking_uri": tracker.uri})
        return tracker

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._stack is not None:
            self._stack.__exit__(exc_type, exc, tb)  # the run ends FAILED when the step failed


def open_pipeline_run(name: str, params: Mapping[str, Any], experiment: str | None = None) -> str:
    """Create the MLflow run the pipeline's steps nest under; its id, or "" untracked."""
    from ser.adapters import tracking

    tracker = tracking.Tracker.from_env(experiment=experiment)
    if not tracker.enabled:
        return ""
    try:
        with tracker.run(name, "stage", params={k: str(v)[:500] for k, v in params.items()}, tags={"ser.pipeline": name}) as run:
            return run.info.run_id
    except Exception as exc:
        log.warning("tracking skipped: cannot open the pipeline run (%s)", exc)
        return ""


def recorded_runs(*folders: str | Path | None) -> list[str]:
    """MLflow run ids recorded in step output folders (``mlflow_run.json``, ``mlflow_runs.json``), in order, once each."""
    ids: list[str] = []
    for folder in folders:
        if folder is None:
            continue
        one, many = Path(folder) / RUN_FILE, Path(folder) / RUNS_FILE
        found = ([read_json(one)["run_id"]] if one.is_file() else []) + (read_json(many)["runs"] if many.is_file() else [])
        ids += [r for r in found if r and r not in ids]
    return ids


def link_runs(parent_run: str, folders: Sequence[str | Path | None]) -> int:
    """Nest the runs recorded in ``folders`` under ``parent_run`` (the pipeline run's).

    A run without a parent gets ``mlflow.parentRunId``; a run a cached step made for an
    earlier pipeline run keeps its first parent and is listed on this one instead
    (``linked_runs.json``): the cache reused it, it was not trained again. Returns the
    number of runs linked; 0 when tracking is off. Tracking never fails a pipeline."""
    runs = recorded_runs(*folders)
    if not parent_run or not runs:
        return 0
    from ser.adapters import tracking

    if not tracking.Tracker.from_env().enabled:
        return 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    nested, reused = [], []
    try:
        for run_id in runs:
            tags = client.get_run(run_id).data.tags
            if tags.get("mlflow.parentRunId") in (None, "", parent_run):
                client.set_tag(run_id, "mlflow.parentRunId", parent_run)
                nested.append(run_id)
            else:
                reused.append(run_id)
        client.log_dict(parent_run, {"nested": nested, "reused_from_cache": reused}, "linked_runs.json")
    except Exception as exc:
        log.warning("tracking: linking %d runs to %s failed (%s)", len(runs), parent_run, exc)
        return 0
    return len(nested) + len(reused)


def configure(s3_endpoint: str = "", mlflow_uri: str = "", experiment: str = "") -> None:
    """Environment of a step: a non-empty parameter wins over the inherited variable
    (S3_ENDPOINT_URL, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME). Keys never come
    from parameters: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are the environment's."""
    for name, value in (("S3_ENDPOINT_URL", s3_endpoint), ("MLFLOW_TRACKING_URI", mlflow_uri), ("MLFLOW_EXPERIMENT_NAME", experiment)):
        if value and value.strip():
            os.environ[name] = value.strip()


def _session():
    """The steps' MLflow session: auto (tracks when MLFLOW_TRACKING_URI answers; runs nest
    under the step's open run)."""
    from ser.adapters import track_runs

    return track_runs.open_session("auto")


# --------------------------------------------------------------------------- final training, evaluation, transfer


def _history_metrics(history_csv: Path) -> list[dict[str, Any]]:
    from ser.data import tables

    if not history_csv.is_file():
        return []
    out = []
    for row in tables.read_rows(history_csv):
        out.append({k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()})
    return out


def _log_training(tracker: Any, out: Path, metrics: Mapping[str, Any]) -> None:
    for rec in _history_metrics(out / "history.csv"):
        epoch = int(rec.pop("epoch", 0))
        tracker.log_metrics({k: v for k, v in rec.items() if not math.isnan(v)}, step=epoch)
    tracker.log_metrics({f"test_{k}": metrics[k] for k in ("accuracy", "ua", "macro_f1", "loss") if isinstance(metrics.get(k), (int, float))})
    for name in ("metrics.json", "config.json", "learning_curve.png", "confusion_matrix.png", "improvements.md"):
        if (out / name).is_file():
            tracker.log_artifact(out / name)


def final_train(features_dir: str | Path, out_dir: str | Path, *, ranking_dir: str | Path | None = None,
                config: Mapping[str, Any] | None = None, feature: str = "", size: int = 0, epochs: int = 0,
                eval_every: int = 10, seed: int = -1, split: str = "", test_size: float = 0.0, device: str = "auto",
                parent_run: str = "") -> dict[str, Any]:
    """The study's final training (:func:`ser.steps.train`) of the search's winner
    (``ranking_dir/winner.json``) or of a fixed ``config`` (retraining) on the
    ``feature``/``size`` feature set. The winner is tested on exactly the sources the
    search held out (``winner_meta.json``'s ``split.test_source_ids``): rows the search
    never saw, whatever feature set won. The epoch is chosen every ``eval_every``
    epochs on validation rows carved from the training side, and the test rows are only
    scored. ``out_dir`` gets ``model.pt``, ``metrics.json``, ``learning_curve.png``,
    ``confusion_matrix.png`` ..."""
    from ser import steps
    from ser.adapters import track_runs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    held: tuple[str, ...] = ()
    if ranking_dir:
        meta = read_json(Path(ranking_dir) / "winner_meta.json")
        vector = meta["vector"]
        feature, size = vector["feature"], int(vector["size"])
        config = read_json(Path(ranking_dir) / "winner.json")
        split_meta = meta.get("split") or {}
        held = tuple(str(s) for s in split_meta.get("test_source_ids") or ())
        seed = int(seed) if int(seed) >= 0 else int(split_meta.get("seed", meta.get("seed", 0)))
        split = split or split_meta.get("protocol", "random")
        test_size = float(test_size) or float(split_meta.get("test_size", 0.2))
    else:
        if not feature or not int(size):
            raise ValueError("final training of a fixed config needs its feature kind and size")
        config = dict(config or {"preset": "optimal-english"})
        seed, split, test_size = max(0, int(seed)), split or "random", float(test_size) or 0.2
    fs_path = Path(features_dir) / feature_file(feature, size)
    if not fs_path.is_file():
        raise FileNotFoundError(f"{fs_path.name} is not among the feature sets ({', '.join(p.name for p in Path(features_dir).glob('*.npz'))})")
    torch_threads()
    req = steps.TrainRequest(features=fs_path, out=out, config=dict(config), split=split, test_size=test_size, seed=seed,
                             held_out_sources=held, held_out_from="the search's held-out sources (winner_meta.json)" if held else "",
                             eval_every=max(1, int(eval_every)), epochs=int(epochs) if int(epochs) > 0 else None,
                             device=device, progress=False, register=track_runs.registry_name(label_names(features_dir)))
    with tracking_run(parent_run, "final training", "final", {"feature": feature, "size": size}, record_dir=out) as tracker:
        if tracker.enabled:
            tracker.log_params({"feature": feature, "size": size, "epochs": epochs, "eval_every": eval_every, "seed": seed, "split": split,
                                "held_out_sources": len(held)})
        metrics = steps.train(req, _session()).metrics
        log.info("final training: UA %.4f, accuracy %.4f, macro F1 %.4f at epoch %s -> %s", metrics.get("ua") or math.nan,
                 metrics["accuracy"], metrics["macro_f1"], metrics.get("best_epoch"), out)
        if tracker.enabled:
            _log_training(tracker, out, metrics)
            metrics["mlflow_run_id"] = tracker.active_run_id()
    metrics["feature"], metrics["size"] = feature, int(size)
    return metrics


def _model_feature(model_dir: str | Path) -> tuple[str, int]:
    from ser.study.models import load_bundle

    bundle = load_bundle(Path(model_dir) / "model.pt")
    spec = bundle.feature_spec or {}
    return str(spec.get("kind", "mel")), int(spec.get("size", bundle.arch.in_size))


def evaluate(model_dir: str | Path, features_dir: str | Path, out_dir: str | Path, rows: str = "test") -> dict[str, Any]:
    """:func:`ser.steps.evaluate` of ``model_dir/model.pt`` on the rows it was tested on
    (the search's held-out sources, else the split its metadata names), on the feature
    set of the model's own spec. Its MLflow run goes to the step's experiment and is
    recorded in ``out_dir`` for :func:`link_runs`."""
    from ser import steps

    kind, size = _model_feature(model_dir)
    fs_path = Path(features_dir) / feature_file(kind, size)
    if not fs_path.is_file():
        raise FileNotFoundError(f"the model needs {fs_path.name}, which the features step did not make")
    torch_threads()
    result = steps.evaluate(steps.EvaluateRequest(model=Path(model_dir) / "model.pt", features=fs_path, out=Path(out_dir), rows=rows), _session())
    if result.run_id:  # nested under the pipeline's run by the link step, like the training runs
        import mlflow

        write_json(Path(out_dir) / RUN_FILE, {"run_id": result.run_id, "name": "evaluate", "tracking_uri": mlflow.get_tracking_uri()})
    data = dict(result.metrics)
    data["feature"], data["size"] = kind, size
    return data


def transfer(model_dir: str | Path, features_dir: str | Path, out_dir: str | Path, *, freeze: str = "g", lrs: str = "2.68e-5",
             batches: str = "48", epochs: int = 150, eval_every: int = 10, seed: int = 0, device: str = "auto",
             cv_folds: int = 0, final_epochs: int = 0, parent_run: str = "") -> dict[str, Any]:
    """:func:`ser.steps.transfer`: the English model's head replaced for the target label
    set, ``freeze`` subsets frozen, fine-tuned over the ``lrs`` x ``batches`` grid on the
    target feature set of the model's kind and size; the best run is kept.
    ``cv_folds`` > 0 scores each grid cell by k-fold cross-validation on the training
    side and trains one final model for ``final_epochs`` (the study's rule);
    0 scores the cells on the test split."""
    from ser import steps
    from ser.adapters import track_runs

    kind, size = _model_feature(model_dir)
    fs_path = Path(features_dir) / feature_file(kind, size)
    if not fs_path.is_file():
        raise FileNotFoundError(f"transfer needs the target-language {fs_path.name} (the winner's feature); add {kind}/{size} to the Greek features step")
    torch_threads()
    req = steps.TransferRequest(model=Path(model_dir) / "model.pt", features=fs_path, out=Path(out_dir), freeze=tuple(parse_list(freeze)) or ("g",),
                                lrs=lrs, batches=batches, epochs=max(1, int(epochs)), eval_every=max(1, int(eval_every)), seed=int(seed),
                                cv_folds=max(0, int(cv_folds)), final_epochs=int(final_epochs) if int(final_epochs) > 0 else None,
                                device=device, progress=False, register=track_runs.registry_name(label_names(features_dir)))
    with tracking_run(parent_run, "transfer", "transfer", {"freeze": freeze, "feature": kind, "size": size},
                      record_dir=out_dir) as tracker:
        metrics = dict(steps.transfer(req, _session()).metrics)
        if tracker.enabled:
            tracker.log_metrics({f"test_{k}": metrics[k] for k in ("accuracy", "ua", "macro_f1", "loss") if isinstance(metrics.get(k), (int, float))})
            for name in ("metrics.json", "summary.md", "runs.md", "learning_curve.png", "confusion_matrix.png"):
                if (Path(out_dir) / name).is_file():
                    tracker.log_artifact(Path(out_dir) / name)
    metrics["feature"], metrics["size"] = kind, size
    return metrics


def training_report(out_dir: str | Path, title: str, metrics: Mapping[str, Any]) -> str:
    """HTML for a KFP HTML artifact: the scores, the learning curve and the confusion matrix."""
    out = Path(out_dir)
    images = [p for p in (out / "learning_curve.png", out / "confusion_matrix.png") if p.is_file()]
    rows = [{"metric": k, "value": metrics.get(k)} for k in ("accuracy", "ua", "macro_f1", "loss", "best_epoch", "checkpoint", "seed", "split") if k in metrics]
    table = "<table border=1 cellpadding=4>" + "".join(f"<tr><td>{html.escape(str(r['metric']))}</td><td>{html.escape(str(r['value']))}</td></tr>" for r in rows) + "</table>"
    extra = ""
    for name in ("improvements.md", "summary.md", "per_class.md"):
        if (out / name).is_file():
            extra += f"<h4>{html.escape(name)}</h4><pre>{html.escape((out / name).read_text(encoding='utf-8'))}</pre>"
    return html_page(title, images, table + extra)


def record_training(data: Mapping[str, Any], model: Any, metrics: Any, confusion: Any, curves: Any, title: str,
                    keys: Sequence[str] | None = None) -> float:
    """What a training step (final train, transfer) shows in the Kubeflow UI: its scalar
    scores as KFP metrics, the confusion matrix, the model's metadata, an HTML report;
    returns the test macro F1 (the step's output parameter)."""
    from ser.study.report import scalars

    for key, value in (scalars(data, keys) if keys else scalars(data)).items():
        metrics.log_metric(key, value)
    confusion.log_confusion_matrix(list(data["labels"]), data["confusion_matrix"])
    model.metadata.update({"feature": data["feature"], "size": data["size"], "macro_f1": data["macro_f1"], "framework": "pytorch"})
    files.write_text(curves.path, training_report(model.path, title, data))
    write_metadata_files(metrics, confusion)  # a file at each path: cacheable by kfp.local too
    return float(data["macro_f1"])


def write_metadata_files(*artifacts: Any) -> None:
    """Write each artifact's metadata as JSON at its path (call last, after log_metric /
    log_confusion_matrix).

    KFP keeps a Metrics or ClassificationMetrics artifact in its metadata and writes no
    file at its path. kfp.local's step cache takes an entry whose local output file is
    missing for stale (kfp/local/cache.py, ``LocalCache._deserialize_artifact`` raises
    ``_MissingArtifactError``, ``LocalCache.get`` answers a miss), so a step with such an
    output would run again on every local rerun. With the file it is cached like any
    other; on Kubeflow the file is one more small output."""
    from ser import files

    for artifact in artifacts:
        files.write_text(artifact.path, json.dumps(dict(artifact.metadata), indent=1, sort_keys=True, default=str))


# --------------------------------------------------------------------------- cross-validation


def cross_validate(table_dir: str | Path, out_dir: str | Path, ensemble_dir: str | Path, *, recipe: str = "plus", labels: str = "english",
                   folds: int = 0, seeds: int = 1, epochs: int = 0, overrides: str = "", device: str = "auto") -> dict[str, Any]:
    """Speaker-independent cross-validation of ``recipe`` on an ingested table
    (:func:`ser.steps.cross_validate`): the fold results in ``out_dir``, the fold models
    as one servable model in ``ensemble_dir/model.pt``. ``folds`` 0 = leave one speaker
    out; ``epochs`` 0 = the recipe's; ``overrides``: ``section.field=value`` pairs
    separated by ``;``. Features go through a scratch cache outside the artifact."""
    import tempfile

    from ser import steps

    out, ensemble = Path(out_dir), Path(ensemble_dir)
    out.mkdir(parents=True, exist_ok=True)
    ensemble.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="ser-cv-features-"))
    try:
        req = steps.CrossValidateRequest(out=out, table=Path(table_dir) / TABLE, recipe=recipe, labels=labels, folds=int(folds) or None,
                                         seeds=int(seeds), epochs=int(epochs) or None,
                                         overrides=tuple(o.strip() for o in overrides.split(";") if o.strip()), cache=cache,
                                         device=device, roots=(Path(table_dir),), progress=False)
        result = steps.cross_validate(req, _session(), log=log.info)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cv = result.cv
    shutil.copyfile(out / "ensemble.pt", ensemble / "model.pt")
    data = {"recipe": cv.recipe.name, "protocol": cv.protocol, "runs": len(cv.folds), "rows": result.rows, "speakers": result.speakers,
            "summary": cv.summary, "labels": list(cv.labels), "confusion_matrix": cv.confusion, "optimistic": cv.recipe.optimistic,
            "problems": len(result.problems), "seed_ensemble": (cv.seed_ensemble or {}).get("summary")}
    write_json(ensemble / "metrics.json", data)
    title = f"{cv.recipe.name} recipe, {cv.protocol}, {result.speakers} speakers"
    images = [p for p in (out / "confusion_matrix.png",) if p.is_file()]
    body = f"<pre>{html.escape((out / 'folds.md').read_text(encoding='utf-8'))}</pre>"
    data["page"] = html_page(title, images, body)
    return data


# --------------------------------------------------------------------------- champion gate, publish (S3 model bucket)


def _champion_score(name: str, model_dir: str | Path, features_dir: str | Path, metric: str):
    """``score(champion_version)`` for :func:`ser.adapters.champion.gate`: the registry's champion
    scored on the candidate's own test rows (the sources of its split), on the feature
    set of the champion's own kind and size. Other labels, or that feature set missing
    here: it cannot be scored on these rows (it keeps its place)."""
    import numpy as np

    from ser.adapters import champion, models_uri
    from ser.study import splits
    from ser.study.models import load_bundle
    from ser.study.training import evaluate as score

    def scorer(version: str):
        champ = load_bundle(models_uri.resolve(f"models:/{name}/{version}"))
        cand = load_bundle(Path(model_dir) / "model.pt")
        kind, size = _model_feature(model_dir)
        spec = champ.feature_spec or {}
        c_kind, c_size = str(spec.get("kind", "mel")), int(spec.get("size", champ.arch.in_size))
        if tuple(champ.labels) != tuple(cand.labels):
            return champion.Score(None, f"it predicts {list(champ.labels)}, the candidate {list(cand.labels)}")
        if not (Path(features_dir) / feature_file(c_kind, c_size)).is_file():
            return champion.Score(None, f"it reads {c_kind}-{c_size} features, which this run did not make")
        meta = cand.meta or {}
        fs = load_features(features_dir, kind, size)
        _, test = splits.recorded_split(fs, meta)  # the rows the candidate was tested on
        sources = set(fs.source_id[test].tolist())
        cfs = load_features(features_dir, c_kind, c_size)
        rows = np.flatnonzero(np.isin(cfs.source_id, list(sources)) & cfs.is_original)
        return champion.Score(float(getattr(score(champ.model, cfs.subset(rows)), metric)),
                              how=f"(scored on the candidate's {len(rows)} test rows)")

    return scorer


def compare_with_champion(model_dir: str | Path, features_dir: str | Path, metrics: Mapping[str, Any], model_bucket: str,
                          name: str, metric: str = "macro_f1", parent_run: str = "") -> dict[str, Any]:
    """Register the candidate in MLflow as a version of ``name`` (alias challenger) and run
    the promotion gate (:func:`ser.adapters.champion.gate`): the registry's champion is scored on
    the candidate's own test rows (same sources, the champion's feature kind and size)
    and ``champion`` moves to the candidate only if its ``metric`` is higher (no champion
    yet: it wins; a champion that cannot be scored on these rows keeps its place). The
    decision is final (a compare-and-set in the registry); :func:`publish` then archives
    the model and copies the registry's champion to S3.

    Without MLflow (MLFLOW_TRACKING_URI unset or not answering) there is no record of a
    champion: nothing is promoted (``promote`` False, ``registered`` False, the reason
    says why); :func:`publish` still archives the model as a version and leaves
    ``name/champion/`` as it is. The returned verdict: promote, candidate, champion
    (-1 when none was scored), champion_version, reason, registry_version, decision."""
    from ser.adapters import champion, tracking

    candidate = float(metrics[metric])
    base = {"candidate": candidate, "champion": -1.0, "champion_version": None, "registry_version": None}
    tracker = tracking.Tracker.from_env()
    if not tracker.enabled:
        return {**base, "promote": False, "registered": False, "decision": "not registered",
                "reason": f"no model registry ({tracker.reason}): the champion is recorded only in MLflow's registry, so "
                          f"none is decided; the model is archived as a version and s3://{model_bucket}/{name}/champion/ "
                          "is left as it is"}
    with tracking_run(parent_run, f"register {name}", "final", {"ser.registered_model": name}) as run:
        if not run.enabled:  # the server went away between the check and the run
            raise champion.ChampionError(f"cannot register {name} in MLflow at {tracker.uri}: {run.reason}")
        logged = run.log_model(Path(model_dir) / "model.pt", registered_name=name)
        verdict = champion.gate(name, logged.version, candidate, _champion_score(name, model_dir, features_dir, metric),
                                metric=metric)
        run.set_tags({"ser.registered_version": logged.version, "promotion.decision": verdict.decision})
    return {**base, "promote": verdict.promoted, "registered": True, "decision": verdict.decision,
            "champion": -1.0 if verdict.champion is None else verdict.champion, "champion_version": verdict.champion_version,
            "registry_version": logged.version, "model_uri": logged.registry_uri, "reason": verdict.reason}


def publish(model_dir: str | Path, eval_dir: str | Path | None, model_bucket: str, name: str, out_dir: str | Path, *,
            promote: bool = True, version: str = "", registry_version: str = "") -> dict[str, Any]:
    """:func:`ser.steps.publish` to the S3 store of the step's environment: the .mar and
    KServe layout under ``s3://model_bucket/name/versions/<version>/``; ``promote`` (the
    gate promoted it, :func:`compare_with_champion`): the serving copy follows the
    registry's champion."""
    from ser import steps
    from ser.adapters.store import S3Store

    req = steps.PublishRequest(model_dir=Path(model_dir), metrics_dir=Path(eval_dir) if eval_dir else None, bucket=model_bucket, name=name,
                               out=Path(out_dir), promote=bool(promote), version=version, registry_version=str(registry_version or ""))
    return steps.publish(req, S3Store.from_env()).info