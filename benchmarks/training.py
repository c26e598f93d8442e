"""Benchmark: training throughput of the study's optimal SquirtleNET (mel 60x60) and of
the plus recipe's network (log-mel frames), ``--recipe study|plus|both``, and of the
whisper recipe's head (``--recipe whisper``).

CPU, same run, same model, same batches of 32, Adam LR 6e-5:
  (a) naive: the images kept as PNG bytes (the study saved its spectrograms as
      pictures) and fed through a per-sample torch Dataset + DataLoader that decodes
      each with PIL and converts it to a tensor;
  (b) ours: ``ser.study.training.fit``: the whole set is one in-memory tensor, batches are
      index lookups.
  Both rows are also measured for the input pipeline alone (no model), which is
  the part the two paths differ in.
CUDA (when present): seconds per epoch for 5120 images of 60x60 (the study's final
  training set size) with fit at batch 32 in fp32 (torch's default precision
  settings), fp32 + TF32 matmuls, bf16 autocast, bf16 + channels_last, and fp32 at
  batch 128 for scale; the naive loader on the GPU for contrast; and the floor set
  by one fused Adam step over the 55M parameters times 160 steps. The study's figure
  is 3.6 s/epoch on a V100. Each row also trains on a learnable synthetic set and
  reports validation accuracy, so a faster setting that learns worse shows up.
The plus recipe (``--recipe plus``, what ``ser cv`` trains by default and
  ``make demo RECIPE=plus`` serves): its network, augmenter and config exactly as ``ser.study.crossval``
  builds them, on log-mel utterances of 1.5-4.5 s (64 bands, 10 ms hop) in the size of
  one EmoDB leave-one-speaker-out training side (480 rows); seconds per epoch on the
  CPU (``--threads``) and, when present, on CUDA in fp32 and bf16, what a whole
  fold of the recipe's epochs takes at that speed, and the seconds of an epoch that the
  augmentation alone (crops, speed, SpecAugment, mixup) takes.
The whisper recipe's head (``--recipe whisper``): built and trained as ``ser cv``
  does, on stacked encoder states (7 x 512 per 20 ms, utterances of 1.5-5 s) in the
  size of one TESS speaker (1400 rows), held in float16 as feature sets hold encoder
  features, and in float32 for contrast (twice the memory); seconds per epoch.

Usage:
    .venv/bin/python benchmarks/training.py [--recipe both|study|plus|whisper] [--samples 256]
        [--threads 2] [--plus-rows 480] [--plus-epochs 4] [--head-rows 1400] [--head-epochs 3]
        [--skip-cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


class Arrays:
    """The columns fit reads from a FeatureSet (images, labels, valid frames); a stand-in
    so the benchmark runs where the audio stack (librosa) is not installed, e.g. a bare
    GPU box."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, length: np.ndarray | None = None) -> None:
        self.images, self.labels = images, labels
        self.length = np.full(len(labels), images.shape[-1], dtype=np.int64) if length is None else length

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def synthetic(n: int, size: int = 60, n_classes: int = 7, seed: int = 0, noise: float = 0.95) -> Arrays:
    """A learnable set: each class lights its own band of rows, under noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    images = rng.random((n, size, size), dtype=np.float32) * noise
    band = size // n_classes
    for c in range(n_classes):
        images[labels == c, c * band : (c + 1) * band, :] += 1.0 - noise
    return Arrays(images, labels)


def padded_rows(n: int, width: int, frames: tuple[int, int], n_classes: int = 7, seed: int = 0, dtype=np.float32) -> Arrays:
    """n rows of ``width`` features by ``frames`` (lowest, highest) frames, standard
    normal, zero-padded on the right to the longest as ``ser.data.dataset`` pads them and
    held in ``dtype``; each class raises its own block of features by 0.5."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    length = rng.integers(frames[0], frames[1] + 1, n).astype(np.int64)
    images = np.zeros((n, width, int(length.max())), dtype=dtype)
    block = width // n_classes
    for i in range(n):
        row = rng.standard_normal((width, length[i]), dtype=np.float32)
        row[labels[i] * block : (labels[i] + 1) * block] += 0.5
        images[i, :, : length[i]] = row
    return Arrays(images, labels, length)


def utterances(n: int, seed: int = 0) -> Arrays:
    """Standardised log-mel rows (64 bands) of 1.5-4.5 s at a 10 ms hop."""
    return padded_rows(n, 64, (150, 450), seed=seed)


def encoder_frames(n: int, seed: int = 0, dtype=np.float16) -> Arrays:
    """Stacked hidden states of whisper-base (7 x 512 per 20 ms) for utterances of
    1.5-5 s (TESS's range), held in float16 as ``ser.data.dataset`` holds encoder features."""
    return padded_rows(n, 7 * 512, (75, 250), seed=seed, dtype=dtype)


def png_bytes(images: np.ndarray) -> list[bytes]:
    from PIL import Image

    out = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray((image * 255).round().astype(np.uint8), mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class PngDataset:
    """The naive path: one sample at a time, decoded from PNG bytes with PIL."""

    def __init__(self, blobs: list[bytes], labels: np.ndarray) -> None:
        self.blobs, self.labels = blobs, labels

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        image = np.asarray(Image.open(io.BytesIO(self.blobs[i])).convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(image).unsqueeze(0), int(self.labels[i])


def naive_epoch(model, loader, optimizer, device, train: bool = True) -> int:
    import torch
    import torch.nn.functional as F

    model.train()
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        seen += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen


def ours_pipeline(fs, device, epochs: int, batch: int = 32, seed: int = 0) -> tuple[float, float]:
    """fit's input path alone: one tensor (made once), shuffled index batches each epoch.
    Returns (seconds for the one-off conversion, seconds per epoch)."""
    import torch

    from ser.study.training import as_tensors

    t0 = time.perf_counter()
    images, labels = as_tensors(fs, device)
    once = time.perf_counter() - t0
    shuffle = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(fs), generator=shuffle).to(device)
        for i in range(0, len(fs), batch):
            idx = order[i : i + batch]
            x, y = images[idx], labels[idx]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return once, (time.perf_counter() - t0) / epochs


def naive_pipeline(loader, epochs: int) -> float:
    """Seconds per epoch of the per-sample loader alone."""
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            pass
    return (time.perf_counter() - t0) / epochs


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_section(args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from ser.study import models
    from ser.study.training import TrainConfig, fit

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    fs = synthetic(args.samples)
    blobs = png_bytes(fs.images)
    dataset = PngDataset(blobs, fs.labels)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=6e-5, device="cpu")
    rows = []

    # Warm up both paths (first-call costs: kernels, allocator, lazy imports).
    torch.manual_seed(0)
    model = models.build(models.OPTIMAL_ENGLISH)
    fit(model, Arrays(fs.images[:64], fs.labels[:64]), None, cfg, progress=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=6e-5)
    naive_epoch(model, DataLoader(PngDataset(blobs[:64], fs.labels[:64]), batch_size=32, shuffle=True), optimizer, device)

    # Input pipeline only, both paths, on a larger set (it is cheap).
    big = synthetic(args.input_samples, seed=3)
    big_loader = DataLoader(PngDataset(png_bytes(big.images), big.labels), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    pipe_naive = len(big) / naive_pipeline(big_loader, 3)
    once, per_epoch = ours_pipeline(big, device, 3)
    pipe_ours = len(big) / per_epoch
    loader = DataLoader(dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))

    # Training: one epoch each from the same initial weights, over --rounds rounds in
    # alternating order ((a) first, then (b) first: neither always runs second); the
    # best round of each counts (a busy CPU only slows).
    def run_naive() -> float:
        torch.manual_seed(0)
        model = models.build(models.OPTIMAL_ENGLISH)
        optimizer = torch.optim.Adam(model.parameters(), lr=6e-5)
        t0 = time.perf_counter()
        n = naive_epoch(model, loader, optimizer, device)
        return n / (time.perf_counter() - t0)

    def run_ours() -> float:
        torch.manual_seed(0)
        model = models.build(models.OPTIMAL_ENGLISH)
        return len(fs) / fit(model, fs, None, cfg, progress=False).seconds

    speeds: dict[str, list[float]] = {"naive": [], "ours": []}
    for r in range(args.rounds):
        order = [("naive", run_naive), ("ours", run_ours)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            speeds[name].append(fn())
    naive_train, ours_train = max(speeds["naive"]), max(speeds["ours"])

    rows.append({"path": "(a) naive: PNG bytes -> PIL -> tensor, per-sample DataLoader", "train_samples_per_s": naive_train, "input_only_samples_per_s": pipe_naive})
    rows.append({"path": "(b) ours: fit, in-memory tensor, index batches", "train_samples_per_s": ours_train, "input_only_samples_per_s": pipe_ours})
    return {
        "device": cpu_name(),
        "threads": args.threads,
        "samples": len(fs),
        "rounds": args.rounds,
        "train_samples_per_s_each_round": speeds,
        "rows": rows,
        "input_samples": len(big),
        "ours_one_off_tensor_s": once,
        "train_speedup": ours_train / naive_train,
        "input_speedup": pipe_ours / pipe_naive,
    }


def cuda_epoch_times(fs, val, precision: str, channels_last: bool, tf32_matmul: bool, epochs: int, seed: int = 0, batch_size: int = 32) -> dict:
    import torch

    from ser.study import models
    from ser.study.training import TrainConfig, fit

    torch.backends.cuda.matmul.allow_tf32 = tf32_matmul
    torch.manual_seed(seed)
    model = models.build(models.OPTIMAL_ENGLISH)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    stamps = []
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=6e-5, seed=seed, device="cuda", precision=precision, eval_every=epochs)
    result = fit(model, fs, val, cfg, progress=False, on_epoch=lambda r: stamps.append(time.perf_counter()), eval_batch_size=1024)
    times = np.diff(stamps)  # epoch k's end to epoch k+1's end; the first epoch (warm-up) is dropped
    last = result.history[-1]
    torch.backends.cuda.matmul.allow_tf32 = False
    return {
        "batch_size": batch_size,
        "precision": precision,
        "channels_last": channels_last,
        "tf32_matmul": tf32_matmul,
        "epochs_timed": len(times) - 1,
        "s_per_epoch_median": float(np.median(times[:-1])) if len(times) > 1 else float("nan"),  # the last includes validation
        "s_per_epoch_min": float(np.min(times[:-1])) if len(times) > 1 else float("nan"),
        "final_train_loss": last.train_loss,
        "val_loss": last.val_loss,
        "val_accuracy": last.accuracy,
    }


def cuda_section(args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from ser.study import models

    fs = synthetic(5120, seed=1)
    val = synthetic(1280, seed=2)
    variants = [("fp32", False, False, 32), ("fp32", False, True, 32), ("bf16", False, False, 32), ("bf16", True, False, 32), ("fp32", False, False, 128)]
    rows = [cuda_epoch_times(fs, val, p, cl, tf, args.cuda_epochs, batch_size=b) for p, cl, tf, b in variants]
    # The floor set by Adam alone: one fused step over the 55M parameters reads and
    # writes parameters, gradients and both moments (~28 bytes per parameter).
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = models.build(models.OPTIMAL_ENGLISH).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=6e-5, fused=True)
    torch.nn.functional.cross_entropy(model(torch.rand(32, 1, 60, 60, device=device)), torch.zeros(32, dtype=torch.long, device=device)).backward()
    for _ in range(5):
        optimizer.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        optimizer.step()
    torch.cuda.synchronize()
    adam_ms = (time.perf_counter() - t0) / 50 * 1e3
    params = sum(p.numel() for p in model.parameters())
    # The naive loader on the GPU, one epoch after a warm-up epoch (fp32).
    blobs = png_bytes(fs.images)
    torch.manual_seed(0)
    model = models.build(models.OPTIMAL_ENGLISH).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=6e-5)
    loader = DataLoader(PngDataset(blobs, fs.labels), batch_size=32, shuffle=True, pin_memory=True)
    naive_epoch(model, loader, optimizer, device)
    t0 = time.perf_counter()
    naive_epoch(model, loader, optimizer, device)
    naive_s = time.perf_counter() - t0
    return {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "images": len(fs),
        "batch_size": 32,
        "rows": rows,
        "naive_dataloader_s_per_epoch_fp32": naive_s,
        "parameters": params,
        "adam_step_ms": adam_ms,
        "adam_floor_s_per_epoch_batch32": adam_ms * math.ceil(len(fs) / 32) / 1e3,
        "study_v100_s_per_epoch": 3.6,
        "target_s_per_epoch": 0.1,
    }


def recipe_epoch_times(name: str, data: Arrays, device: str, precision: str, epochs: int) -> dict:
    """Seconds per epoch of recipe ``name`` (plus or whisper) as ``ser cv`` trains a fold
    (its network, augmenter and config), the first epoch dropped as warm-up."""
    import torch

    from ser.study import crossval, models
    from ser.study.plus import augmenter
    from ser.study.training import fit

    recipe = crossval.load_recipe(name)
    layers = 7 if recipe.features.kind == "whisper" else 1
    spec = crossval.model_spec(recipe, int(data.images.shape[1]), 7, layers)
    torch.manual_seed(0)
    model = models.build(spec)
    cfg = recipe.train.with_(epochs=epochs, device=device, precision=precision)
    stamps = [time.perf_counter()]
    fit(model, data, None, cfg, progress=False, augment=augmenter(recipe.augment, spec.window, spec.n_classes),
        on_epoch=lambda r: stamps.append(time.perf_counter()))
    times = np.diff(stamps)[1:]
    median = float(np.median(times))
    return {"device": device, "precision": precision, "rows": len(data), "storage": str(data.images.dtype),
            "set_gb": data.images.nbytes / 1e9, "epochs_timed": len(times),
            "s_per_epoch_median": median, "s_per_epoch_min": float(np.min(times)),
            "augment_s_per_epoch": augment_epoch_time(data, augmenter(recipe.augment, spec.window, spec.n_classes), device, cfg.batch_size),
            "recipe_epochs": recipe.train.epochs, "s_per_fold_estimate": median * recipe.train.epochs,
            "parameters": sum(p.numel() for p in model.parameters())}


def augment_epoch_time(data: Arrays, augment, device: str, batch_size: int, passes: int = 3) -> float:
    """Seconds the augmenter alone takes over one epoch's batches, called as ``fit``
    calls it (the set as held, the batch's labels, valid frames and row indices); the
    median of ``passes`` epochs after a warm-up one."""
    import torch

    images = torch.from_numpy(np.ascontiguousarray(data.images)).unsqueeze(1).to(device)
    labels, lengths = torch.from_numpy(data.labels).to(device), torch.from_numpy(data.length).to(device)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(passes + 1):
        t0 = time.perf_counter()
        for batch in torch.randperm(len(data), generator=gen).to(device).split(batch_size):
            augment(images, labels[batch], lengths[batch], gen, batch)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def plus_section(args) -> dict:
    import torch

    data = utterances(args.plus_rows, seed=4)
    rows = []
    if not args.skip_cpu:
        torch.set_num_threads(args.threads)
        rows.append(recipe_epoch_times("plus", data, "cpu", "fp32", args.plus_epochs))
    if torch.cuda.is_available():
        rows += [recipe_epoch_times("plus", data, "cuda", p, args.plus_epochs) for p in ("fp32", "bf16")]
    return {"rows": rows, "threads": None if args.skip_cpu else args.threads, "cpu": None if args.skip_cpu else cpu_name(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def whisper_section(args) -> dict:
    """The whisper recipe's head on encoder features held as feature sets hold them
    (float16) and, for contrast, in float32 (twice the memory)."""
    import torch

    rows = []
    for dtype in (np.float16, np.float32):
        data = encoder_frames(args.head_rows, seed=5, dtype=dtype)
        if not args.skip_cpu:
            torch.set_num_threads(args.threads)
            rows.append(recipe_epoch_times("whisper", data, "cpu", "fp32", args.head_epochs))
        if torch.cuda.is_available():
            rows.append(recipe_epoch_times("whisper", data, "cuda", "fp32", args.head_epochs))
        del data
    return {"rows": rows, "threads": None if args.skip_cpu else args.threads, "cpu": None if args.skip_cpu else cpu_name(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256, help="images for the CPU comparison (default 256)")
    parser.add_argument("--input-samples", type=int, default=2048, help="images for the input-pipeline-only rows (default 2048)")
    parser.add_argument("--rounds", type=int, default=2, help="CPU training rounds in alternating order; the best of each path counts (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--cuda-epochs", type=int, default=5, help="epochs per CUDA variant; the first is warm-up, the last validates (default 5)")
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA rows")
    parser.add_argument("--recipe", choices=("study", "plus", "both", "whisper"), default="both",
                        help="which training path to time: the study's SquirtleNET, the plus recipe, both (default), "
                             "or the whisper recipe's head on encoder features")
    parser.add_argument("--plus-rows", type=int, default=480, help="utterances in the plus rows (default 480: one EmoDB LOSO training side)")
    parser.add_argument("--plus-epochs", type=int, default=4, help="epochs per plus row, at least 2; the first is warm-up (default 4)")
    parser.add_argument("--head-rows", type=int, default=1400, help="utterances in the whisper rows (default 1400: one TESS speaker)")
    parser.add_argument("--head-epochs", type=int, default=3, help="epochs per whisper row, at least 2; the first is warm-up (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "training.json")
    args = parser.parse_args()
    if min(args.plus_epochs, args.head_epochs) < 2:
        parser.error("--plus-epochs and --head-epochs must be at least 2 (the first epoch is warm-up, not timed)")

    import torch

    result: dict = {"benchmark": "training", "torch": torch.__version__,
                    "model": {"study": "SquirtleNET optimal English (ser.study.models.OPTIMAL_ENGLISH), 60x60",
                              "plus": "the plus recipe's network as recipes/cv/plus.yaml declares it",
                              "whisper": "the whisper recipe's head as recipes/cv/whisper.yaml declares it, on 7 x 512 stacked encoder states"}}
    if args.recipe in ("plus", "both"):
        plus = plus_section(args)
        result["plus"] = plus
        if plus["rows"]:
            cpu = f"CPU {plus['cpu']} ({plus['threads']} threads)" if plus["cpu"] else "no CPU row (--skip-cpu)"
            print(f"plus recipe ({plus['rows'][0]['parameters'] / 1e6:.2f}M parameters), {args.plus_rows} log-mel utterances of 1.5-4.5 s, "
                  f"{cpu}, CUDA {plus['cuda'] or 'none'}:")
            print(table(plus["rows"], ["device", "precision", "s_per_epoch_median", "s_per_epoch_min", "augment_s_per_epoch", "recipe_epochs",
                                       "s_per_fold_estimate"]) + "\n")
        else:
            print("plus recipe: no rows (--skip-cpu and no CUDA device)")
    if args.recipe == "whisper":
        head = whisper_section(args)
        result["whisper"] = head
        cpu = f"CPU {head['cpu']} ({head['threads']} threads)" if head["cpu"] else "no CPU row (--skip-cpu)"
        print(f"whisper recipe's head ({head['rows'][0]['parameters'] / 1e6:.2f}M parameters), {args.head_rows} utterances of 1.5-5 s "
              f"as 7 x 512 encoder states per 20 ms, {cpu}, CUDA {head['cuda'] or 'none'}:" if head["rows"] else "whisper: no rows")
        print(table(head["rows"], ["device", "storage", "set_gb", "s_per_epoch_median", "s_per_epoch_min", "augment_s_per_epoch", "recipe_epochs",
                                   "s_per_fold_estimate"]) + "\n")
    if args.recipe in ("study", "both"):
        if not args.skip_cpu:
            cpu = cpu_section(args)
            result["cpu"] = cpu
            print(f"CPU {cpu['device']} ({cpu['threads']} threads, {cpu['samples']} images 60x60, batch 32):")
            print(table(cpu["rows"], ["path", "train_samples_per_s", "input_only_samples_per_s"]))
            print(f"input-only rows: {cpu['input_samples']} images, per epoch (ours also pays {cpu['ours_one_off_tensor_s']:.3f} s once to build the tensor)")
            print(f"speed-up: training x{cpu['train_speedup']:.2f}, input pipeline x{cpu['input_speedup']:.0f}\n")
        if torch.cuda.is_available():
            gpu = cuda_section(args)
            result["cuda"] = gpu
            print(f"CUDA {gpu['device']}: {gpu['images']} images 60x60, batch 32 (study: 3.6 s/epoch on a V100; target < 0.1 s)")
            print(table(gpu["rows"], ["batch_size", "precision", "channels_last", "tf32_matmul", "s_per_epoch_median", "s_per_epoch_min", "val_accuracy", "val_loss"]))
            print(f"naive per-sample PNG DataLoader, fp32, batch 32: {gpu['naive_dataloader_s_per_epoch_fp32']:.3f} s/epoch")
            print(f"Adam alone: {gpu['adam_step_ms']:.3f} ms per step over {gpu['parameters'] / 1e6:.1f}M parameters = "
                  f"{gpu['adam_floor_s_per_epoch_batch32']:.3f} s per epoch at batch 32 (a floor no input pipeline can beat)")
        else:
            result["cuda"] = None
            print("no CUDA device: GPU epoch time not measured")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
