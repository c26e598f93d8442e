"""`ser demo`: the whole product on one laptop, with real servers, then cleaned up.

Starts a real S3 server (SeaweedFS) and a real MLflow server on 127.0.0.1, runs the
`ser_study` Kubeflow pipeline locally through kfp's SubprocessRunner on the
synthetic corpora, serves the published winner with TorchServe, posts fresh
recordings to the endpoint, prints every URL and artifact location, and stops what
it started. With --keep-running it waits instead, until Ctrl-C, SIGTERM or
`ser services down` (which finds the servers in the per-user registry), and then
stops them; a SIGTERM at any point stops every server started so far.

--recipe plus runs the `ser_cv` pipeline instead: the plus recipe cross-validated
over the English corpus's speakers (UA, WA and macro F1 on voices each fold model
never heard), then serves the fold models as one ensemble.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from pathlib import Path

from ser.cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole study locally: S3 + MLflow + Kubeflow pipeline (kfp local) + TorchServe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", type=Path, default=Path(".ser/demo"),
                   help="where corpora, pipeline outputs, server data and logs go (default .ser/demo)")
    p.add_argument("--recipe", choices=("study", "plus"), default="study",
                   help="study (default): the ser_study pipeline, the study's search, final training and Greek transfer; "
                   "plus: the ser_cv pipeline, the plus recipe over speaker folds, its ensemble served")
    p.add_argument("--budget", choices=("smoke", "demo"), default="demo",
                   help="'demo' (default, a few minutes on 2 cores) or 'smoke' (the smallest budgets, for tests)")
    p.add_argument("--parallelism", type=int, default=2, help="parallel fold-training tasks per stage (default 2)")
    p.add_argument("--per-class", type=int, default=40,
                   help="synthetic English recordings per emotion (default 40; Greek gets 60%% of that)")
    p.add_argument("--english", metavar="NAME=DIR", default=None,
                   help="a real English corpus as distributed instead of the synthetic one, e.g. ravdess=.ser/data/corpora/ravdess "
                   "(get it with `ser fetch ravdess DIR`; `make demo CORPUS=ravdess` does both); the Greek side stays synthetic")
    p.add_argument("--no-mlflow", action="store_true", help="run without the MLflow server (tracking skipped; without the registry nothing is "
                   "promoted: the models are archived as versions and the English one is served from there)")
    p.add_argument("--no-serve", action="store_true", help="stop after the pipeline; do not start TorchServe")
    p.add_argument("--keep-running", action="store_true",
                   help="at the end, keep S3, MLflow and TorchServe running until Ctrl-C, SIGTERM or `ser services down`")
    p.set_defaults(func=cmd_demo)


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from ser.ops import services
    from ser.kubeflow import runner as pipeline_runner

    english = None
    if args.english:
        name, sep, folder = args.english.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            raise UserError(f"--english takes NAME=DIR with an existing corpus folder, got {args.english!r} "
                            f"(get one with `ser fetch {name or 'ravdess'} DIR`)")
        english = (name, Path(folder).resolve())
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ExitStack() as stack:
        _banner("starting a real S3 server (SeaweedFS) on 127.0.0.1")
        s3 = services.LocalS3(workdir / "s3")
        try:
            s3.start(record=True)
        except services.ServiceError as exc:
            raise UserError(f"could not start the local S3 server: {exc}") from None
        stack.callback(s3.stop)  # on success, error, Ctrl-C and SIGTERM (ser.cli.Terminated) alike
        running = [s3]
        print(f"S3 endpoint {s3.url} (data in {workdir / 's3'})")
        mlflow_uri = None
        if not args.no_mlflow:
            _banner("starting a real MLflow server on 127.0.0.1 (artifacts in S3)")
            mlflow = services.LocalMLflow(workdir / "mlflow", s3_env=s3.env())
            try:
                mlflow.start(record=True)
            except services.ServiceError as exc:
                raise UserError(f"could not start the local MLflow server: {exc}") from None
            stack.callback(mlflow.stop)
            running.append(mlflow)
            mlflow_uri = mlflow.url
            print(f"MLflow UI {mlflow_uri}")

        what = f"the {english[0]} corpus in {english[1]} (Greek: synthetic)" if english else "SYNTHETIC corpora"
        if args.recipe == "plus":
            _banner(f"running the ser_cv Kubeflow pipeline locally (kfp SubprocessRunner): the plus recipe over the speakers of {what}")
            summary = pipeline_runner.run_demo_cv(workdir, s3, mlflow_uri, pipeline_runner.preset_params(f"{args.budget}-cv"),
                                                  english_per_class=args.per_class, english=english)
        else:
            _banner(f"running the ser_study Kubeflow pipeline locally (kfp SubprocessRunner) on {what}")
            budgets = pipeline_runner.preset_params(args.budget)  # src/ser/recipes/pipeline/{demo,smoke}.yaml
            summary = pipeline_runner.run_demo(workdir, s3, mlflow_uri, budgets, parallelism=args.parallelism,
                                               english_per_class=args.per_class,
                                               greek_per_class=max(2, round(0.6 * args.per_class)), english=english)
        print(pipeline_runner.format_summary(summary))
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

        if not args.no_serve:
            if args.recipe == "plus":
                _banner("serving the fold models as one ensemble with TorchServe")
                mar = _packaged(Path(summary["artifacts"]["ensemble"]), workdir)
            else:
                _banner("serving the winning English model with TorchServe")
                mar = _published(summary, workdir, s3)
            answer, torchserve = _serve_and_ask(mar, workdir, stack)
            running.append(torchserve)
            print(json.dumps(answer, indent=2))
        if mlflow_uri:
            registry = "" if args.recipe == "plus" else "; registry ser-english, ser-greek"
            print(f"\nMLflow: {mlflow_uri} (experiment ser-demo{registry})")
        print(f"S3: {s3.url}; summary: {workdir / 'summary.json'}")
        print(f"demo finished in {time.perf_counter() - started:.0f} s (results are on {'real ' + english[0] if english else 'SYNTHETIC'} data)")
        if args.keep_running:
            print("servers left running: stop them with Ctrl-C here or `ser services down`", flush=True)
            services.wait_while_running(running)
        print("stopping every server the demo started ...", flush=True)
    return 0


def _published(summary: dict, workdir: Path, s3) -> Path:
    """The .mar of the model the pipeline published, fetched from the S3 model bucket (its KServe layout)."""
    from ser.adapters import store as s3store

    published = summary.get("published") or {}
    uri = published.get("champion_uri") or published.get("uri")
    if not uri:
        raise UserError("the pipeline published no model to serve; see the runner log above")
    bucket, prefix = s3store.parse_uri(uri)
    local = workdir / "serve" / "published"
    s3.store().download_prefix(bucket, prefix, local, progress=False)
    mar = next(iter(sorted(local.rglob("*.mar"))), None)
    if mar is None:
        raise UserError(f"no .mar archive under {uri}")
    print(f"model archive {uri} -> {mar}")
    return mar


def _packaged(model_dir: Path, workdir: Path) -> Path:
    """A .mar of a model folder (the cross-validation's ensemble), as `ser package` makes it."""
    from ser.serve import package

    mar = package.build_mar(model_dir, workdir / "serve" / "packaged" / "ser-english.mar", name="ser-english")
    print(f"model archive {model_dir} -> {mar}")
    return mar


def _serve_and_ask(mar: Path, workdir: Path, stack: ExitStack):
    """Serve ``mar`` with TorchServe (recorded for `ser services`, stopped by ``stack``),
    and post fresh synthetic recordings to the endpoint; (first answer, recorded server)."""
    import requests

    from ser.data.corpora import synthetic
    from ser.ops import services
    from ser.serve import torchserve

    server = torchserve.start(mar, run_dir=workdir / "serve" / "run")
    stack.callback(server.stop)
    recorded = services.track_process("torchserve", server.process.pid, server.url, server.run_dir)
    stack.callback(services.forget_server, "torchserve", server.process.pid)
    # Recordings the model has never seen: same generator, another seed, one per emotion.
    fresh = synthetic.generate(workdir / "serve" / "fresh", layout="ravdess", per_class=1, speakers=1, seed=2026)
    headers = {**server.headers(), "Content-Type": "application/octet-stream"}
    print(f"TorchServe endpoint {server.predict_url}")
    answers, right = [], 0
    for clip in fresh:
        response = requests.post(server.predict_url, data=clip.read_bytes(), headers=headers, timeout=60)
        if response.status_code != 200:
            raise UserError(f"the endpoint answered {response.status_code} for {clip.name}: {response.text[:300]}")
        answer, truth = response.json(), _true_label(clip)
        right += answer["label"] == truth
        answers.append(answer)
        print(f"  POST {clip.name}  true {truth:<10} -> {answer['label']:<10} p={answer['probabilities'][answer['label']]:.2f}")
    print(f"{right} of {len(fresh)} fresh synthetic recordings right (chance: 1 in {len(fresh)})")
    print("call it yourself (while it runs, e.g. with --keep-running):\n  " + server.curl(str(fresh[0])))
    return answers[0], recorded


def _true_label(path: Path) -> str:
    from ser.data.corpora import ravdess

    parsed = ravdess.parse_name(f"{path.parent.name}/{path.name}")
    return parsed.emotion if parsed else "unknown"
