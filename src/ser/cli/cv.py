"""`ser cv`: speaker-independent cross-validation of a recipe (ser.steps.cross_validate)."""

from __future__ import annotations

import argparse

from ser import steps
from ser.settings import add_arguments, from_args


def register(sub: argparse._SubParsersAction) -> None:
    from ser.adapters.track_runs import add_arguments as add_tracking

    p = sub.add_parser(
        "cv",
        help="speaker-independent cross-validation of a recipe: UA, WA, macro F1 (mean +- std) on unseen voices",
        description="Test every speaker once with models that never heard them: leave-one-speaker-out "
        "(default) or --folds K speaker groups. Inside each fold the checkpoint is the last epoch (plus, "
        "whisper: every training speaker trains) or is chosen, with any early stop, on validation speakers "
        "carved from the training speakers (checkpoint: validation), never on test rows (the "
        "'study' recipe keeps the study's rule, test-loss checkpoints, and says its scores are "
        "optimistic). Recipes: plus (log-mel frames, a time-pooling CNN, crops, speed perturbation, "
        "SpecAugment, mixup, label smoothing), study (the study's optimal SquirtleNET on mel 60x60), "
        "whisper (a frozen Whisper-base encoder and a small head; pip install 'ser[encoder]'), or "
        "a YAML file (copy src/ser/recipes/cv/plus.yaml). Give --table to extract the recipe's "
        "features (cached), or --features made with the same spec. Writes OUT/recipe.yaml, "
        "folds.md/.csv, summary.json, confusion_matrix.png, one folder per (fold, seed) with its "
        "model, and ensemble.pt (the fold models as one servable model); with MLflow, one run holds "
        "the recipe, the scores and those files. An interrupted run resumes: finished folds are not redone.",
    )
    add_arguments(p, steps.CrossValidateRequest)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI; automatic when not on a terminal)")
    add_tracking(p, register=False)
    p.set_defaults(func=cmd_cv)


def cmd_cv(args: argparse.Namespace) -> int:
    from ser.cli.study import _open_tracking
    from ser.study import crossval, metrics

    req = from_args(steps.CrossValidateRequest, args, progress=not args.no_progress)
    result = steps.cross_validate(req, _open_tracking(args))
    cv = result.cv
    if result.problems:
        for path, reason in result.problems[:5]:
            print(f"  skipped {path}: {reason}")
        if len(result.problems) > 5:
            print(f"  ... and {len(result.problems) - 5} more skipped rows")
    print(f"{cv.recipe.name} recipe on {result.rows} rows, {result.speakers} speakers, classes {', '.join(cv.labels)}")
    print(f"{cv.recipe.name}, {cv.protocol}, {len(cv.folds)} runs: {metrics.format_summary(cv.summary)} -> {req.out / 'folds.md'}")
    if cv.recipe.optimistic:
        print(f"note: {crossval.OPTIMISTIC_NOTE}")
    if result.ablation is not None:
        print(f"ablation ({len(result.ablation) - 1} switches) -> {req.out / 'ablation' / 'ablation.md'}")
    return 0
