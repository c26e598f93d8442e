"""Feature sets: an utterance table turned into images, labels and provenance.

Batch extraction runs on every core, shows a progress bar, and keeps an on-disk
cache keyed by (file hash, feature spec), written one batch of clips at a time and
atomically: a second run does no work, and an interrupted run resumes where it
stopped, losing at most the batches in flight. Files that fail to decode are
reported and skipped, never fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ser.data import allocator, audio
from ser.data.features import FeatureSpec, extract, extract_file, resolve
from ser.data.labels import label_set

_STR_COLUMNS = ("speaker", "corpus", "source_id", "group", "augment")


@dataclass
class FeatureSet:
    """Images with their labels and provenance; one row per (possibly augmented) utterance.

    ``group`` is the source file an augmented copy came from (equal to
    ``source_id`` for originals); ``augment`` is "" for originals, else the copy's
    mode ("add" or "replace"). Splits use both so copies follow their source.
    """

    images: np.ndarray  # (n, N, N) float32 in [0, 1]; logmel: (n, N, T) padded, see ``length``; whisper: float16 (storage_dtype)
    labels: np.ndarray  # (n,) int64 indices into label_names
    label_names: tuple[str, ...]
    spec: FeatureSpec
    speaker: np.ndarray
    corpus: np.ndarray
    source_id: np.ndarray
    group: np.ndarray
    augment: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    #: Valid frames per row: logmel arrays are padded on the right to the longest one
    #: (at most MAX_FRAMES); image kinds are always full width.
    length: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.length is None:
            self.length = np.full(len(self.labels), self.images.shape[-1] if self.images.ndim == 3 else 0, dtype=np.int64)
        self.length = np.asarray(self.length, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def is_original(self) -> np.ndarray:
        return self.augment == ""

    def subset(self, index: np.ndarray | Sequence[int]) -> "FeatureSet":
        idx = np.asarray(index, dtype=np.int64)
        cols = {name: getattr(self, name)[idx] for name in _STR_COLUMNS}
        return FeatureSet(self.images[idx], self.labels[idx], self.label_names, self.spec, meta=dict(self.meta), length=self.length[idx], **cols)

    def keep_classes(self, names: Sequence[str]) -> "FeatureSet":
        """The rows of ``names``' classes only, relabelled to ``names`` in that order: a
        model scored on another corpus is scored on the emotions both know."""
        index = {name: i for i, name in enumerate(names)}
        ours = np.array([index.get(name, -1) for name in self.label_names], dtype=np.int64)
        rows = np.flatnonzero(ours[self.labels] >= 0) if len(self) else np.zeros(0, np.int64)
        part = self.subset(rows)
        part.labels, part.label_names = ours[part.labels], tuple(names)
        return part

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts)}

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed .npz: zlib took 1.9 s for 2800 mel images to save 10%
        of 40 MB, more than half of a warm `ser features` run."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            images=self.images.astype(np.float32),
            labels=self.labels.astype(np.int64),
            label_names=np.array(self.label_names),
            spec=np.array(json.dumps(self.spec.to_dict())),
            meta=np.array(json.dumps(self.meta)),
            length=self.length,
            **{name: getattr(self, name).astype(str) for name in _STR_COLUMNS},
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a feature set file ({exc})") from None
        with data:
            return cls(
                images=data["images"],
                labels=data["labels"],
                label_names=tuple(str(x) for x in data["label_names"]),
                spec=FeatureSpec.from_dict(json.loads(str(data["spec"]))),
                meta=json.loads(str(data["meta"])),
                length=data["length"] if "length" in data.files else None,
                **{name: data[name].astype(str) for name in _STR_COLUMNS},
            )

    @classmethod
    def concat(cls, parts: Sequence["FeatureSet"]) -> "FeatureSet":
        first = parts[0]
        for part in parts[1:]:
            if part.spec != first.spec or part.label_names != first.label_names:
                raise ValueError("cannot join feature sets of different specs or label sets")
        cols = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _STR_COLUMNS}
        width = max(p.images.shape[-1] for p in parts)
        return cls(
            np.concatenate([pad_frames(p.images, width) for p in parts]),
            np.concatenate([p.labels for p in parts]),
            first.label_names,
            first.spec,
            meta=dict(first.meta),
            length=np.concatenate([p.length for p in parts]),
            **cols,
        )


def _field(row: Any, name: str, default: str = "") -> str:
    value = row.get(name, default) if isinstance(row, dict) else getattr(row, name, default)
    return "" if value is None else str(value)


class FeatureCache:
    """Images keyed by file hash under root/<spec key>/, one .npz shard per batch.

    Shards rather than a file per clip: creating and writing back thousands of small
    files cost a third of a cold run on 2 cores (benchmarks/features.py). Each shard
    is written under a temporary name and renamed, so readers never see half of one;
    a damaged shard is skipped and its clips are computed again.
    """

    def __init__(self, root: str | Path, spec: FeatureSpec, create: bool = True) -> None:
        self.dir = Path(root) / spec.key()
        self.dtype = storage_dtype(spec)
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))

    def lookup(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached images among ``keys``, read shard by shard."""
        wanted = set(keys)
        found: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("*.npz")):
            if len(found) == len(wanted):
                break
            try:
                with np.load(shard, allow_pickle=False) as data:
                    shard_keys = [str(k) for k in data["keys"]]
                    hits = [i for i, k in enumerate(shard_keys) if k in wanted and k not in found]
                    if hits:
                        images = data["images"]
                        length = data["length"] if "length" in data.files else np.full(len(shard_keys), images.shape[-1])
                        found.update((shard_keys[i], images[i][:, : int(length[i])]) for i in hits)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                continue
        return found

    def put(self, keys: Sequence[str], images: Sequence[np.ndarray]) -> None:
        if not keys:
            return
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]
        tmp = self.dir / f".{name}.{os.getpid()}.tmp.npz"
        self.dir.mkdir(parents=True, exist_ok=True)
        stacked, length = stack_frames(images, images[0].shape[0], self.dtype)
        np.savez(tmp, keys=np.array(keys), images=stacked, length=length)
        os.replace(tmp, self.dir / f"{name}.npz")


def _worker_setup() -> None:
    """Each worker is one of the cores: BLAS threads inside it only fight the others
    (a 60-band mel projection took 12 ms instead of 0.1 ms on two busy cores). It
    also keeps freed memory, so clips stop paying page faults for their buffers."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    allocator.keep_freed_memory()


def _pool_context(spec: FeatureSpec) -> BaseContext:
    """Fork workers from this process when that is safe, else spawn fresh ones.

    A spawned worker spends seconds importing librosa (numba, scipy.signal)
    and loading its compiled code before its first clip, on every run; forked ones
    inherit what one warm-up call here paid once. A parent that has loaded torch
    spawns instead: torch's OpenMP pool does not survive a fork.
    """
    if "fork" not in get_all_start_methods() or "torch" in sys.modules:
        return get_context("spawn")
    extract(np.sin(np.arange(8192, dtype=np.float32) / 9.0), 16000, spec)
    return get_context("fork")


def _work(args: tuple[list[tuple[str, str]], dict, str | None]) -> list[tuple[np.ndarray | None, str]]:
    """Extract a batch of (path, cache key) in a worker, which also writes the batch's
    cache shard: the parent only gathers results and stays off the workers' cores."""
    batch, spec_dict, cache_dir = args
    spec = FeatureSpec.from_dict(spec_dict)
    results: list[tuple[np.ndarray | None, str]] = []
    for path, _ in batch:
        try:
            results.append((extract_file(path, spec), ""))
        except audio.AudioError as exc:
            results.append((None, str(exc)))
        except Exception as exc:  # one bad file must never stop a batch; it is reported
            results.append((None, f"{type(exc).__name__}: {exc}"))
    if cache_dir:
        done = [(key, image) for (_, key), (image, _) in zip(batch, results) if key and image is not None]
        try:
            FeatureCache(cache_dir, spec, create=False).put([k for k, _ in done], [im for _, im in done])
        except OSError as exc:  # the cache only saves time: keep the images, say why it failed
            warnings.warn(f"feature cache not written ({exc}); the images are kept", stacklevel=1)
    return results


#: The longest logmel array a feature set keeps (10 s at a 10 ms hop): a longer
#: utterance keeps its central part, so one long file cannot blow up the whole array.
MAX_FRAMES = 1000


def pad_frames(images: np.ndarray, width: int) -> np.ndarray:
    """(n, N, T) -> (n, N, width), zeros on the right (rows keep their ``length``)."""
    if images.shape[-1] >= width:
        return images
    return np.pad(images, ((0, 0), (0, 0), (0, width - images.shape[-1])))


def storage_dtype(spec: FeatureSpec) -> type:
    """How a feature set and the cache hold ``spec``'s features: float16 for the whisper
    encoder's (every hidden state of whisper-base is 3584 numbers per 20 ms: TESS's 2800
    clips padded to 5 s take 10 GB in float32), float32 for the rest. Training reads
    them back as float32 batch by batch; serving never rounds them."""
    return np.float16 if spec.kind == "whisper" else np.float32


def stack_frames(images: Sequence[np.ndarray], size: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Images of equal height and any width -> one (n, N, T) array of ``dtype`` padded on
    the right, and each row's valid width (at most MAX_FRAMES, centre kept)."""
    if not images:
        return np.zeros((0, size, size), dtype), np.zeros(0, np.int64)
    kept = []
    for image in images:
        extra = image.shape[-1] - MAX_FRAMES
        kept.append(image[:, extra // 2 : extra // 2 + MAX_FRAMES] if extra > 0 else image)
    length = np.array([k.shape[-1] for k in kept], dtype=np.int64)
    out = np.zeros((len(kept), kept[0].shape[0], int(length.max())), dtype)
    for i, k in enumerate(kept):
        out[i, :, : k.shape[-1]] = k
    return out, length


@dataclass(frozen=True)
class ExtractionReport:
    computed: int
    cached: int
    problems: list[tuple[str, str]]


def build(
    rows: Iterable[Any],
    spec: FeatureSpec,
    labels: str = "english",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[FeatureSet, ExtractionReport]:
    """Extract one image per table row (dicts or Utterance objects).

    Rows need ``path``, ``sha256``, ``emotion``, ``speaker``, ``corpus`` and may carry
    ``augmented_from`` and ``augment`` (augmented copies). Rows whose emotion is not
    in the label set are left out (RAVDESS calm, say) and counted in the report.
    """
    names = label_set(labels)
    rows = list(rows)
    spec = resolve(spec)  # whisper: the encoder's identity joins the cache key
    cache = FeatureCache(cache_dir, spec) if cache_dir else None
    images: list[np.ndarray | None] = [None] * len(rows)
    problems: list[tuple[str, str]] = []
    keep = []
    for i, row in enumerate(rows):
        emotion = _field(row, "emotion")
        if emotion not in names:
            problems.append((_field(row, "path"), f"emotion {emotion!r} not in the {labels} label set"))
        else:
            keep.append(i)
    found = cache.lookup(_field(rows[i], "sha256") for i in keep) if cache else {}
    todo = []
    for i in keep:
        image = found.get(_field(rows[i], "sha256"))
        if image is None:
            todo.append(i)
        else:
            images[i] = image
    cached_count = len(keep) - len(todo)
    # The encoder runs on every core by itself (CTranslate2's threads); one copy of it
    # per worker would only multiply its memory.
    workers = 1 if spec.kind == "whisper" else (workers or os.cpu_count() or 1)
    # Batches of up to 32 clips: few cache shards, yet every worker gets several.
    size = max(1, min(32, -(-len(todo) // (4 * workers))))
    batches = [todo[start : start + size] for start in range(0, len(todo), size)]
    spec_dict, cache_root = spec.to_dict(), str(cache_dir) if cache else None
    jobs = [([(_field(rows[i], "path"), _field(rows[i], "sha256")) for i in batch], spec_dict, cache_root) for batch in batches]

    def progress_bar() -> tqdm | contextlib.nullcontext:
        # Made after the pool forks, and only when shown: a tqdm starts a monitor thread.
        if not progress or not todo:
            return contextlib.nullcontext(None)
        shape = f"{spec.encoder} {spec.size}" if spec.kind == "whisper" else f"{spec.size}x{spec.size}"
        return tqdm(total=len(todo), desc=f"features {spec.kind} {shape}", unit="clip")

    def gather(results: Iterable[list[tuple[np.ndarray | None, str]]]) -> None:
        with progress_bar() as bar:
            for batch, batch_results in zip(batches, results):
                for i, (image, error) in zip(batch, batch_results):
                    if image is None:
                        problems.append((_field(rows[i], "path"), error))
                    else:
                        images[i] = image
                if bar is not None:
                    bar.update(len(batch))

    if workers > 1 and len(todo) > 32:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(spec), initializer=_worker_setup) as pool:
            gather(pool.map(_work, jobs))
    elif spec.kind == "whisper":
        gather(map(_work, jobs))
    else:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # as in the workers: identical bits
            gather(map(_work, jobs))
    ok = [i for i in keep if images[i] is not None]
    stacked, length = stack_frames([images[i] for i in ok], spec.size, storage_dtype(spec))
    fs = FeatureSet(
        images=stacked,
        length=length,
        labels=np.array([names.index(_field(rows[i], "emotion")) for i in ok], dtype=np.int64),
        label_names=names,
        spec=spec,
        speaker=np.array([_field(rows[i], "speaker") for i in ok], dtype=str),
        corpus=np.array([_field(rows[i], "corpus") for i in ok], dtype=str),
        source_id=np.array([_field(rows[i], "sha256") for i in ok], dtype=str),
        group=np.array([_field(rows[i], "augmented_from") or _field(rows[i], "sha256") for i in ok], dtype=str),
        augment=np.array([_field(rows[i], "augment") for i in ok], dtype=str),
        meta={"label_set": labels},
    )
    return fs, ExtractionReport(computed=len(todo), cached=cached_count, problems=problems)
