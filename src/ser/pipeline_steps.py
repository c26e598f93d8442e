"""The library side of the Kubeflow components: one function per pipeline step.

A component body (``components/*.py``) is serialised into the pipeline YAML and runs
in the ``ser`` image, where ``components/`` does not exist; so each body is a few
lines that call one function here with plain paths and values, then hand the
returned numbers to KFP (Metrics, ClassificationMetrics, HTML, Markdown).  These
functions know nothing of KFP: they read and write folders, so they are tested,
and usable, without it.

Paths inside step outputs: a table stores the audio paths *relative to the
artifact folder that holds the file* (``corpora/...`` in the ingest output,
``audio/...`` in the augment output), and :func:`read_table` resolves them against
the folders a step was given.  Artifact folders therefore stay valid wherever KFP
downloads them (``/minio/...`` on a cluster, ``local_outputs/...`` locally).

S3 (raw corpora in, published models out) goes through :mod:`ser.store` with the
endpoint and keys of the environment only (KFP: the secret
``mlpipeline-minio-artifact``; locally: the parent process).  MLflow tracking is
optional: with ``MLFLOW_TRACKING_URI`` unset, or the server down, steps still run.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

TABLE = "table.csv"
PROBLEMS = "problems.csv"
SUMMARY = "summary.json"


# --------------------------------------------------------------------------- small helpers


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


def as_int(value: Any) -> int:
    """KFP hands ints inside Dict/List parameters back as floats: 2.0 -> 2."""
    return int(round(float(value)))


def torch_threads() -> int:
    """Set torch's intra-op threads from ``SER_TORCH_THREADS`` (unset: leave torch's default)."""
    import torch

    wanted = os.environ.get("SER_TORCH_THREADS", "").strip()
    if wanted:
        torch.set_num_threads(max(1, int(wanted)))
    return torch.get_num_threads()


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    from ser import report

    return report.write_json(path, data)


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def html_page(title: str, images: Sequence[str | Path] = (), body: str = "") -> str:
    """A self-contained HTML page (PNG images inlined) for a KFP HTML artifact."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h3>{html.escape(title)}</h3>", body]
    for image in images:
        data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        parts.append(f"<div><img alt='{html.escape(Path(image).name)}' src='data:image/png;base64,{data}'/></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    from ser import report

    return report.markdown_table(rows, columns) if rows else "(no rows)\n"


# --------------------------------------------------------------------------- tables in artifacts


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()  # already relative to some artifact folder
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p)


def write_table(rows: Iterable[Mapping[str, Any]], folder: str | Path, columns: Sequence[str], name: str = TABLE) -> Path:
    """Write rows to ``folder/name`` with paths under ``folder`` made relative to it."""
    from ser import tables

    folder = Path(folder)
    out = [{**row, "path": _relative(str(row["path"]), folder)} for row in rows]
    return tables.write_rows(out, folder / name, columns)


def read_table(folder: str | Path, roots: Sequence[str | Path] = (), name: str = TABLE) -> list[dict]:
    """Rows of ``folder/name`` with each relative path resolved against ``folder`` and
    then ``roots`` (the other artifact folders the table refers to), first hit wins."""
    from ser import tables

    folder = Path(folder)
    rows = tables.read_rows(folder / name)
    bases = [folder, *(Path(r) for r in roots)]
    for row in rows:
        rel = row["path"]
        if os.path.isabs(rel):
            continue
        hit = next((b / rel for b in bases if (b / rel).exists()), None)
        if hit is None:
            raise FileNotFoundError(f"{rel}: listed in {folder / name} but found under none of {', '.join(map(str, bases))}")
        row["path"] = str(hit.resolve())
    return rows


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    from ser import augment, corpora

    cols = list(corpora.COLUMNS)
    if any(k in r for r in rows for k in augment.AUGMENT_COLUMNS):
        cols += list(augment.AUGMENT_COLUMNS)
    return cols


def class_counts_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    from collections import Counter

    counts = Counter((r["corpus"], r["emotion"]) for r in rows)
    corpora_ = sorted({c for c, _ in counts})
    emotions = sorted({e for _, e in counts})
    table = [{"emotion": e, **{c: counts.get((c, e), 0) for c in corpora_}, "total": sum(counts.get((c, e), 0) for c in corpora_)} for e in emotions]
    table.append({"emotion": "total", **{c: sum(counts.get((c, e), 0) for e in emotions) for c in corpora_}, "total": len(rows)})
    return markdown_table(table, ["emotion", *corpora_, "total"])


# --------------------------------------------------------------------------- ingest (S3 -> table)


def ingest(data_bucket: str, corpora: str, out_dir: str | Path, select: str = "all", seed: int = 0) -> dict[str, Any]:
    """Download each corpus prefix from S3 and scan it into an utterance table.

    ``corpora``: ``NAME=PREFIX`` pairs, e.g. ``"ravdess=corpora/ravdess,tess=corpora/tess"``
    or ``"synthetic=corpora/synthetic-ravdess"``. Writes ``out_dir/corpora/NAME/...``
    (the files), ``out_dir/table.csv`` and ``out_dir/problems.csv``.
    S3 errors (wrong key, missing bucket) raise :class:`ser.store.StoreError`
    naming the endpoint and bucket.
    """
    from ser import corpora as corpora_mod
    from ser.store import S3Store

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = S3Store.from_env()
    groups: dict[str, list] = {}
    problems: list = []
    downloaded = {}
    t0 = time.perf_counter()
    for name, prefix in parse_pairs(corpora):
        if name not in corpora_mod.CORPORA and name != "synthetic":
            raise ValueError(f"unknown corpus {name!r}; expected one of {', '.join([*corpora_mod.CORPORA, 'synthetic'])}")
        root = out / "corpora" / name
        files = store.download_prefix(data_bucket, prefix, root, progress=False)
        downloaded[name] = {"uri": f"s3://{data_bucket}/{prefix.strip('/')}", "files": len(files)}
        result = corpora_mod.scan(name, root)
        for row in result.rows:
            groups.setdefault(row.corpus, []).append(row)
        problems += result.problems
    rows = corpora_mod.select_study(groups, seed) if select == "study" else [r for g in groups.values() for r in g]
    from dataclasses import asdict

    dict_rows = [asdict(r) for r in rows]
    write_table(dict_rows, out, corpora_mod.COLUMNS)
    write_table([{"path": p.path, "reason": p.reason} for p in problems], out, ("path", "reason"), PROBLEMS)
    info = {
        "rows": len(dict_rows),
        "problems": len(problems),
        "corpora": downloaded,
        "labels": sorted({r["corpus"] for r in dict_rows}),
        "select": select,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(out / SUMMARY, info)
    info["markdown"] = (
        f"### Utterance table: {len(dict_rows)} rows, {len(problems)} files not used\n\n"
        + "".join(f"- {n}: {d['files']} files from `{d['uri']}`\n" for n, d in downloaded.items())
        + "\n" + class_counts_markdown(dict_rows)
        + ("\n**Synthetic data** (not real speech).\n" if any(corpora_mod.is_synthetic(c) for c in info["labels"]) else "")
    )
    return info


# --------------------------------------------------------------------------- augment


def augment(table_dir: str | Path, out_dir: str | Path, corpora: str = "tess", mode: str = "replace", copies: int = 1, seed: int = 0) -> dict[str, Any]:
    """Perturbed copies of the rows of ``corpora`` (the study: TESS, mode replace).

    Writes ``out_dir/audio/*.wav`` and ``out_dir/table.csv`` (the originals, whose
    paths refer to ``table_dir``, plus the copies)."""
    from ser import augment as augment_mod

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_table(table_dir)
    wanted = tuple(parse_list(corpora))
    # synthetic corpora are labelled "synthetic-<layout>": let "tess" also name "synthetic-tess"
    labels = {r["corpus"] for r in rows}
    wanted = tuple(c for c in labels if c in wanted or c.removeprefix("synthetic-") in wanted or c in {f"synthetic-{w}" for w in wanted})
    new_rows, problems = augment_mod.augment_rows(rows, out / "audio", mode=mode, copies=as_int(copies), seed=as_int(seed), corpora=wanted, progress=False)
    all_rows = [*rows, *new_rows]
    table_root = Path(table_dir)
    # originals keep paths relative to the ingest folder, copies relative to this one
    out_rows = [{**r, "path": _relative(r["path"], table_root) if not r.get("augmented_from") else r["path"]} for r in all_rows]
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


def feature_file(kind: str, size: int) -> str:
    return f"{kind}-{as_int(size)}.npz"


def features(table_dir: str | Path, out_dir: str | Path, kinds: str = "mel", sizes: str = "60", labels: str = "english", roots: Sequence[str | Path] = (), workers: int | None = None, rate: int | None = None) -> dict[str, Any]:
    """One feature set per (kind, size) in ``out_dir/<kind>-<size>.npz``."""
    from ser import dataset, tables
    from ser.features import FeatureSpec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_table(table_dir, roots)
    cache = out.parent / (out.name + ".cache")
    made, lines = {}, []
    t0 = time.perf_counter()
    for kind in parse_list(kinds):
        for size in parse_list(sizes, int):
            spec = FeatureSpec(kind=kind, size=size, sample_rate=rate)
            fs, rep = dataset.build(rows, spec, labels=labels, cache_dir=cache, workers=workers, progress=False)
            if len(fs) == 0:
                raise ValueError(f"no usable rows in {table_dir} for the {labels} label set")
            fs.meta.update({"table": str(Path(table_dir) / TABLE), "problems": len(rep.problems)})
            name = feature_file(kind, size)
            fs.save(out / name)
            tables.write_problems(rep.problems, out / f"{name[:-4]}.problems.csv")
            made[name] = {"n": len(fs), "classes": fs.class_counts(), "problems": len(rep.problems)}
            lines.append({"file": name, "images": len(fs), "augmented": int((~fs.is_original).sum()), "problems": len(rep.problems)})
    shutil.rmtree(cache, ignore_errors=True)
    info = {"labels": labels, "sets": made, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / SUMMARY, info)
    info["markdown"] = f"### Feature sets ({labels})\n\n" + markdown_table(lines, ["file", "images", "augmented", "problems"])
    return info


def load_features(features_dir: str | Path, kind: str | None = None, size: int | None = None):
    """The feature set of ``kind``/``size`` in a features folder (the only one if None)."""
    from ser.dataset import FeatureSet

    folder = Path(features_dir)
    if kind is None or size is None:
        files = sorted(folder.glob("*.npz"))
        if len(files) != 1:
            raise ValueError(f"{folder}: {len(files)} feature sets; say which kind and size")
        return FeatureSet.load(files[0])
    path = folder / feature_file(kind, size)
    if not path.is_file():
        have = ", ".join(p.name for p in sorted(folder.glob("*.npz"))) or "none"
        raise FileNotFoundError(f"{path.name} not in the features step output (have: {have}); add {kind} / {as_int(size)} to the features step")
    return FeatureSet.load(path)
