"""``ser search``: the study's architecture search (METHOD.md sections 4-6) on
feature sets -> ranking table (CSV + Markdown) and, after stage 4, the winner.

Heavy imports (torch, numpy) happen inside the handler so ``ser --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ser.cli import UserError
from ser.steps import load_features

STAGES = ("1", "2", "3", "4", "all")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="random search + 5-fold CV with early stopping over the CNNs -> ranking table and winner",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
The study's search (METHOD.md sections 4-6), driven by a recipe file:
  stage 1  random vectors for every (CNN, feature, size) given; the first ten are
           the same for every combination; vectors above the thresholds are listed
  stage 2  new vectors per CNN on 60x60 mel and chroma, stricter stopping; merged
  stage 3  perturbations around the best three; merged
  stage 4  the best four trained without early stopping; the best is the winner
Each vector is scored by k-fold cross-validation on the TRAINING side of one seeded
80/20 split (the test side is never touched; the split is recorded in the outputs),
with early stopping rules A (abandon), B (stop the fold, cap later folds) and C.

Writes OUT/stage<n>/ranking.csv + ranking.md (the study's Table 2: ID, CNN,
feature, N, every secondary parameter, batch, LR, time, epochs needed, macro F1
and accuracy mean +- std over folds), OUT/ranking.csv/.md (the latest stage),
OUT/search.json (recipe, split, seed), and after stage 4 OUT/winner.json (a
`ser train --config` file) with OUT/winner_meta.json (feature spec, scores).

Resumable: every finished (vector, fold) is a JSON file under WORKDIR and is
never recomputed; a killed fold resumes from its checkpoint. Rerun the same
command to continue.""",
    )
    p.add_argument("--features", type=Path, action="append", default=None, metavar="F.npz",
                   help="feature set from `ser features`; repeat for several kinds/sizes (one file per kind and size)")
    p.add_argument("--stage", choices=STAGES, default="all",
                   help="stage to run (1, 2, 3, 4) or all of the recipe's stages in order (default all)")
    p.add_argument("--recipe", default="study", metavar="study|demo|PATH.yaml",
                   help="the search as data: 'study' (METHOD.md's grids, budgets and thresholds), 'demo' (tiny: 1 CNN, "
                   "2 vectors, 2 folds, 3 epochs, 5%% width) or your own YAML (start from --show-recipe) (default study)")
    p.add_argument("--show-recipe", action="store_true", help="print the recipe's YAML (shipped recipes) or its parsed form, then exit")
    p.add_argument("--trials", type=int, default=None, metavar="K",
                   help="vectors per combination in random stages and per parent in stage 3 (overrides the recipe, exceptions included)")
    p.add_argument("--folds", type=int, default=None, metavar="K", help="k of the k-fold cross-validation (default: the recipe's; study 5)")
    p.add_argument("--epochs", type=int, default=None, metavar="E",
                   help="maximum epochs of every stage; stage 4's fixed epochs (default: the recipe's; study 300 / 150)")
    p.add_argument("--previous", type=Path, default=None, metavar="RANKING.csv",
                   help="ranking to start stage 2, 3 or 4 from (default: OUT/stage<n-1>/ranking.csv when it exists)")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="where per-fold results and checkpoints live (default OUT/work); reuse it to resume")
    p.add_argument("--out", type=Path, required=False, default=None, metavar="DIR", help="output folder (required unless --show-recipe)")
    p.add_argument("--split", choices=("random", "speaker"), default=None,
                   help="train/test split and folds: random (stratified, the study) or speaker (no speaker on both sides); default: the recipe's")
    p.add_argument("--test-size", type=float, default=None, help="held-out test fraction, never seen by the search (default: the recipe's, 0.2)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed of the split, the folds and every draw (default: the recipe's, 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train: auto (CUDA if present, else CPU), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--top", type=int, default=10, help="ranking rows to print (default 10)")
    p.add_argument("--mlflow", action="store_true",
                   help="log to MLflow at $MLFLOW_TRACKING_URI: one run per stage, nested runs per vector and per fold "
                   "with per-epoch metrics (fails at once if the server does not answer)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.set_defaults(func=cmd_search)


def _load_recipe(args: argparse.Namespace):
    from ser.study import recipes, search_space

    try:
        recipe = recipes.load_recipe(args.recipe)
        return recipe.with_overrides(trials=args.trials, folds=args.folds, epochs=args.epochs, seed=args.seed,
                                     split=args.split, test_size=args.test_size)
    except search_space.SearchError as exc:
        raise UserError(str(exc)) from None


def _feature_sets(paths: list[Path]):
    sets, sources = {}, {}
    for path in paths:
        fs = load_features(path)
        key = (fs.spec.kind, int(fs.images.shape[-1]))
        if key in sets:
            raise UserError(f"{path} and {sources[key]} are both {key[0]} {key[1]}x{key[1]}: give one file per kind and size")
        sets[key], sources[key] = fs, str(path)
    labels = {fs.label_names for fs in sets.values()}
    if len(labels) > 1:
        raise UserError("the feature sets have different label sets; a search compares models on the same classes")
    return sets, sources


def _previous(args: argparse.Namespace, first: int, recipe):
    """The ranking the first stage run starts from, checked against this run's split."""
    from ser.study import ranking, search_space

    path = args.previous
    if path is None and first > 1:
        guess = args.out / f"stage{first - 1}" / "ranking.csv"
        path = guess if guess.is_file() else None
    if path is None:
        if first > 1 and recipe.stage(first).kind != "random":
            raise UserError(f"stage {first} starts from the ranking of stage {first - 1}: pass --previous RANKING.csv "
                            f"(or run stage {first - 1} with the same --out first)")
        return None
    try:
        rows = ranking.load_ranking(path)
    except search_space.SearchError as exc:
        raise UserError(str(exc)) from None
    for meta_path in (path.parent / "search.json", path.parent.parent / "search.json"):
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            old = meta.get("split") or {}
            now = {"protocol": recipe.split, "seed": recipe.seed, "test_size": recipe.test_size}
            diff = [k for k in now if k in old and old[k] != now[k]]
            if diff:
                raise UserError(
                    f"{path} was ranked on another split ({', '.join(f'{k} {old[k]!r}' for k in diff)}; this run: "
                    f"{', '.join(f'{k} {now[k]!r}' for k in diff)}): its vectors were chosen with rows that are test rows here. "
                    "Use the same --split/--seed/--test-size."
                )
            break
    print(f"starting from {path} ({len(rows)} vectors)")
    return rows


def _print_ranking(rows: list[dict], top: int) -> None:
    head = f"{'#':>3} {'id':<12} {'cnn':<9} {'feature':<7} {'N':>3} {'batch':>5} {'LR':>8} {'epochs':>6} {'macro F1 %':>13} {'accuracy %':>13}  stopped by"
    print(head)
    for r in rows[:top]:
        f1 = f"{100 * r['macro_f1']:.1f} ± {100 * r['macro_f1_std']:.1f}" if r.get("macro_f1") == r.get("macro_f1") else "-"
        acc = f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f}" if r.get("accuracy") == r.get("accuracy") else "-"
        flag = " (abandoned)" if r.get("abandoned") else (" *" if r.get("qualified") else "")
        print(f"{r['rank']:>3} {r['id']:<12} {r['cnn']:<9} {r['feature']:<7} {r['N']:>3} {r['batch']:>5} {r['LR']:>8.2g} "
              f"{r['epochs']:>6.1f} {f1:>13} {acc:>13}  {r['stopped_by']}{flag}")
    if len(rows) > top:
        print(f"... {len(rows) - top} more")
    print("(* listed: above the stage's macro F1 and accuracy thresholds)")


def cmd_search(args: argparse.Namespace) -> int:
    recipe = _load_recipe(args)
    if args.show_recipe:
        from ser import files
        from ser.study import recipes

        if args.recipe in recipes.BUILTIN_RECIPES and not any(
            v is not None for v in (args.trials, args.folds, args.epochs, args.seed, args.split, args.test_size)
        ):
            print(recipes.recipe_text(args.recipe), end="")
        else:
            import yaml

            print(yaml.safe_dump(json.loads(json.dumps(files.jsonable(recipe.to_dict()))), sort_keys=False), end="")
        return 0
    if not args.features:
        raise UserError("give at least one --features F.npz")
    if args.out is None:
        raise UserError("give --out DIR")
    import torch

    from ser.study import search

    if args.threads:
        torch.set_num_threads(int(args.threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU; use --device cpu or auto")
    feature_sets, sources = _feature_sets(args.features)
    stages = sorted(recipe.stages) if args.stage == "all" else [int(args.stage)]
    if args.stage != "all":
        if stages[0] not in recipe.stages:
            raise UserError(f"recipe {recipe.name} has no stage {stages[0]} (it has {sorted(recipe.stages)})")
    previous = _previous(args, stages[0], recipe)
    tracker = None
    if args.mlflow:
        from ser.adapters import tracking

        try:
            tracker = tracking.Tracker.from_env(strict=True)
        except tracking.TrackingError as exc:
            raise UserError(str(exc)) from None
    try:
        outcome = search.run_search(
            recipe, feature_sets, stages, out=args.out, workdir=args.workdir, previous=previous, device=args.device,
            tracker=tracker, progress=not args.no_progress, sources=sources,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except ValueError as exc:  # SearchError, SplitError, a foreign checkpoint
        raise UserError(str(exc)) from None
    split = outcome.split
    print(f"split: {split['protocol']} {round(100 * (1 - split['test_size']))}/{round(100 * split['test_size'])}, seed {split['seed']} "
          f"(the search used only the training side); {recipe.folds}-fold CV; recipe {recipe.name} ({recipe.hash()})")
    _print_ranking(outcome.ranking, args.top)
    last = max(outcome.paths)
    print(f"ranking: {outcome.paths[last]['csv']} and {outcome.paths[last]['md']} (also {args.out / 'ranking.md'})")
    if outcome.winner is not None:
        w = outcome.winner
        print(f"winner: {w['id']} ({w['cnn']}, {w['feature']} {w['N']}x{w['N']}): macro F1 {100 * w['macro_f1']:.1f}%, "
              f"accuracy {100 * w['accuracy']:.1f}% -> {outcome.paths[last]['winner']} (use with `ser train --config`)")
    print(f"per-fold results: {args.workdir or args.out / 'work'} (rerun to resume)")
    return 0
