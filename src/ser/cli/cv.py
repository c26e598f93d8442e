"""`ser cv`: speaker-independent cross-validation of a recipe (ser.study.crossval)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ser.cli import UserError
from ser.steps import load_features


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cv",
        help="speaker-independent cross-validation of a recipe: UA, WA, macro F1 (mean +- std) on unseen voices",
        description="Test every speaker once with models that never heard them: leave-one-speaker-out "
        "(default) or --folds K speaker groups. Inside each fold the checkpoint and the early stop are "
        "chosen on validation speakers carved from the training speakers, never on test rows (the "
        "'study' recipe keeps the study's rule, test-loss checkpoints, and says its scores are "
        "optimistic). Recipes: plus (log-mel frames, a time-pooling CNN, crops, speed perturbation, "
        "SpecAugment, mixup, label smoothing), study (the study's optimal SquirtleNET on mel 60x60), "
        "whisper (a frozen Whisper-base encoder and a small head; pip install 'ser[encoder]'), or "
        "a YAML file (copy src/ser/recipes/cv/plus.yaml). Give --table to extract the recipe's "
        "features (cached), or --features made with the same spec. Writes OUT/recipe.yaml, "
        "folds.md/.csv, summary.json, confusion_matrix.png, one folder per (fold, seed) with its "
        "model, and ensemble.pt (the fold models as one servable model). An interrupted run "
        "resumes: finished folds are not redone.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", type=Path, help="utterance table (from `ser ingest`): features are extracted with the recipe's spec")
    src.add_argument("--features", type=Path, help="feature set (.npz) made with the recipe's feature spec")
    p.add_argument("--recipe", default="plus", help="plus, study, whisper, or a recipe file (YAML/JSON) (default plus)")
    p.add_argument("--labels", choices=("english", "greek", "emodb", "basic6", "basic4"), default="english",
                   help="label set for --table (which classes the run keeps; default english)")
    p.add_argument("--folds", type=int, default=None, help="K speaker groups instead of leave-one-speaker-out")
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..K-1 (mean/std over folds and seeds; default 1)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch budget")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one recipe field, e.g. augment.mixup=0 or model.pooling=mean (repeatable; the ablation switches)")
    p.add_argument("--ablation", action="store_true",
                   help="also rerun the recipe with each of its switches off alone, on the same folds and seeds "
                   "(OUT/ablation.md: UA/WA/F1 mean +- std and the UA change per switch)")
    p.add_argument("--cache", type=Path, default=Path(".ser/cache/features"), help="feature cache folder (with --table)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=cmd_cv)


def apply_overrides(recipe, pairs: list[str]):
    """``section.field=value`` overrides (values parsed as YAML) on a recipe."""
    import yaml

    from ser.study.crossval import CVError, override

    changes = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise UserError(f"--set takes SECTION.FIELD=VALUE, got {pair!r}")
        changes[name] = yaml.safe_load(text)
    try:
        return override(recipe, changes)
    except CVError as exc:
        raise UserError(f"--set: {exc}") from None


def cmd_cv(args: argparse.Namespace) -> int:
    import torch

    from ser.data import dataset, tables
    from ser.study import crossval, metrics

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU")
    try:
        recipe = crossval.load_recipe(args.recipe)
    except crossval.CVError as exc:
        raise UserError(str(exc)) from None
    recipe = apply_overrides(recipe, args.set)
    if args.epochs:
        recipe = recipe.with_(train=recipe.train.with_(epochs=args.epochs))
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    made: dict = {}

    def features_for(variant):
        """The feature set a recipe (or an ablation variant) needs: extracted from --table
        with its spec (cached), or --features checked against it."""
        key = variant.features.key()
        if key in made:
            return made[key]
        if args.table:
            try:
                rows = tables.read_rows(args.table)
            except (FileNotFoundError, ValueError) as exc:
                raise UserError(str(exc)) from None
            fs, rep = dataset.build(rows, variant.features, labels=args.labels, cache_dir=args.cache, progress=not args.no_progress)
            if len(fs) == 0:
                raise UserError(f"no usable rows in {args.table} for the {args.labels} label set")
            for path, reason in rep.problems[:5]:
                print(f"  skipped {path}: {reason}")
            if len(rep.problems) > 5:
                print(f"  ... and {len(rep.problems) - 5} more skipped rows")
        else:
            fs = load_features(args.features)
            if not fs.spec.matches(variant.features):
                raise UserError(f"{args.features} was extracted with {fs.spec.to_dict()}, the recipe needs {variant.features.to_dict()}: "
                                "pass --table to extract it")
        made[key] = fs
        return fs

    fs = features_for(recipe)
    print(f"{recipe.name} recipe on {len(fs)} rows, {len(set(fs.speaker.tolist()))} speakers, classes {', '.join(fs.label_names)}")
    try:
        result = crossval.run(fs, recipe, args.out, folds=args.folds, seeds=tuple(range(args.seeds)), device=args.device,
                              progress=not args.no_progress)
    except crossval.CVError as exc:
        raise UserError(str(exc)) from None
    print(f"{recipe.name}, {result.protocol}, {len(result.folds)} runs: {metrics.format_summary(result.summary)} -> {args.out / 'folds.md'}")
    if recipe.optimistic:
        print(f"note: {crossval.OPTIMISTIC_NOTE}")
    if args.ablation:
        try:
            rows = crossval.ablation(features_for, recipe, args.out / "ablation", folds=args.folds, seeds=tuple(range(args.seeds)),
                                     device=args.device, progress=not args.no_progress, base=result)
        except crossval.CVError as exc:
            raise UserError(str(exc)) from None
        print(f"ablation ({len(rows) - 1} switches) -> {args.out / 'ablation' / 'ablation.md'}")
    return 0
