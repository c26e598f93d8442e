"""Pipeline commands: compile, run-local, submit (Kubeflow Pipelines v2).

kfp is imported inside the handlers, so ``ser --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ser.cli import UserError
from ser.kubeflow.runner import PRESETS  # light: kfp is imported by the runner's functions

PIPELINES = ("ser_study", "ser_retrain", "ser_cv")
DEFAULT_SERVICE_ACCOUNT = "ser-pipeline-runner"  # manifests/base/pipeline-runs/pipeline-runner.yaml


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu-image", default=None, help="image of the CPU steps (default: ser.ops.images.CPU_IMAGE)")
    p.add_argument("--gpu-image", default=None, help="image of the GPU steps (default: ser.ops.images.GPU_IMAGE, V100)")
    p.add_argument("--parallelism", type=int, default=None,
                   help="parameter vectors trained at once per search stage (default 8 for compile/submit, 2 for run-local)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="Kubeflow pipelines: compile to YAML, run locally (kfp local), submit to a cluster",
        description="The whole study (ser_study), retraining (ser_retrain) and speaker-independent cross-validation "
        "of a recipe (ser_cv: --param recipe=plus|study|whisper) as Kubeflow Pipelines v2. "
        "`compile` writes the YAML a cluster takes; `run-local` runs a pipeline unchanged through kfp's "
        "SubprocessRunner in this venv (S3 keys and MLflow URI from the environment); `submit` starts a run "
        "on a KFP API endpoint.",
    )
    psub = p.add_subparsers(dest="pipeline_command", metavar="ACTION")
    psub.required = True

    c = psub.add_parser("compile", help="write build/pipelines/<name>.yaml for each pipeline",
                        description="Compile ser_study, ser_retrain and ser_cv to YAML packages (upload them in the KFP UI, or "
                        "use `ser pipeline submit`). GPU steps carry the V100 node-pool settings.")
    c.add_argument("--out", type=Path, default=Path("build/pipelines"), help="output folder (default build/pipelines)")
    c.add_argument("--pipeline", choices=PIPELINES, action="append", default=None, help="only this pipeline (repeatable)")
    _add_build_options(c)
    c.set_defaults(func=cmd_compile)

    r = psub.add_parser("run-local", help="run a pipeline locally through kfp.local (no cluster, no Docker)",
                        description="Run a pipeline with kfp.local.SubprocessRunner(use_venv=False): every step runs as a "
                        "subprocess of this venv. S3 endpoint and keys come from S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY (`ser services up` prints them), MLflow from MLFLOW_TRACKING_URI (optional). "
                        "Outputs land under ROOT/<pipeline>-<time>/<task>/.")
    r.add_argument("--pipeline", choices=PIPELINES, default="ser_study", help="which pipeline (default ser_study)")
    r.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter (repeatable)")
    r.add_argument("--preset", choices=PRESETS, default=None,
                   help="budget preset (src/ser/recipes/pipeline/NAME.yaml): study (ser_study with the study's transfer grid: "
                   "subsets a..g, 7 LRs, batches 16-64, 150 epochs, cells scored by 5-fold CV, a 2000-epoch final model), "
                   "demo / smoke (ser_study's small budgets), demo-cv / smoke-cv (ser_cv's: the plus recipe, a few epochs); "
                   "a preset for another pipeline is refused; --param overrides it")
    r.add_argument("--root", type=Path, default=Path("local_outputs"), help="pipeline root for outputs (default local_outputs)")
    r.add_argument("--log", type=Path, default=None,
                   help="file for the runner's detailed output (default ROOT/logs/<pipeline>-<time>.log; the console shows one line per step)")
    r.add_argument("--verbose", action="store_true", help="stream the runner's detailed output to the console instead of a log file")
    r.add_argument("--demo", action="store_true",
                   help="ser_study on the synthetic demo corpora (generated and uploaded to the S3 of the environment) with the "
                   "demo budgets; --param still overrides")
    r.add_argument("--threads-per-task", type=int, default=None, help="torch/BLAS threads per step (default: cores / parallelism)")
    r.add_argument("--json", action="store_true", help="print the outputs as JSON at the end")
    r.add_argument("--cache", action="store_true",
                   help="kfp.local's step cache (in ROOT/.kfp_cache): a rerun with the same data and parameters under the same "
                   "ROOT reuses every cacheable step's outputs, as Kubeflow does; the steps that look at S3 or MLflow still run")
    _add_build_options(r)
    r.set_defaults(func=cmd_run_local)

    s = psub.add_parser("submit", help="start a pipeline run on a Kubeflow Pipelines endpoint",
                        description="Compile the pipeline and start a run through kfp.Client().create_run_from_pipeline_package. "
                        "Host and token come from --host / --token or KFP_HOST / KFP_TOKEN (or a token file named by "
                        "KF_PIPELINES_SA_TOKEN_PATH).")
    s.add_argument("--host", default=None, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (default $KFP_HOST)")
    s.add_argument("--token", default=None, help="bearer token (default $KFP_TOKEN); prefer the environment to the command line")
    s.add_argument("--pipeline", choices=PIPELINES, default="ser_retrain", help="which pipeline (default ser_retrain)")
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter (repeatable)")
    s.add_argument("--preset", choices=PRESETS, default=None, help="budget preset (see `ser pipeline run-local --help`); --param overrides it")
    s.add_argument("--experiment", default="ser", help="KFP experiment (default ser)")
    s.add_argument("--namespace", default=None, help="Kubernetes namespace (multi-user Kubeflow)")
    s.add_argument("--run-name", default=None, help="run name (default: pipeline and time)")
    s.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                   help=f"service account of the run's pods (default {DEFAULT_SERVICE_ACCOUNT}; '' for KFP's default)")
    s.add_argument("--no-cache", action="store_true", help="disable step caching for this run")
    _add_build_options(s)
    s.set_defaults(func=cmd_submit)


def _options(args: argparse.Namespace) -> dict:
    return {"cpu_image": args.cpu_image, "gpu_image": args.gpu_image, "parallelism": args.parallelism}


def cmd_compile(args: argparse.Namespace) -> int:
    from ser.kubeflow import runner as pr

    try:
        paths = pr.compile_pipelines(args.out, tuple(args.pipeline or PIPELINES), **_options(args))
    except pr.PipelineError as exc:
        raise UserError(str(exc)) from None
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_run_local(args: argparse.Namespace) -> int:
    import time

    from ser.kubeflow import runner as pr

    options = _options(args)
    if options["parallelism"] is None:
        options["parallelism"] = 2
    if args.demo and args.pipeline != "ser_study":
        raise UserError("--demo runs ser_study")
    try:
        fn = pr.build(args.pipeline, **options)
        params = {**(pr.preset_params(args.preset, fn) if args.preset else {}), **pr.parse_params(args.param, fn)}
        if args.demo:
            from ser.adapters.store import S3Store, StoreError

            try:
                store = S3Store.from_env()
                corpora = pr.upload_demo_corpora(store, args.root / "demo-data")
                store.ensure_bucket(pr.DEMO_MODEL_BUCKET)
            except StoreError as exc:
                raise UserError(str(exc)) from None
            params = pr.demo_arguments(corpora, params)
    except pr.PipelineError as exc:
        raise UserError(str(exc)) from None
    threads = args.threads_per_task or max(1, (os.cpu_count() or 2) // max(1, options["parallelism"]))
    log = None if args.verbose else (args.log or args.root / "logs" / f"{args.pipeline}-{time.strftime('%Y%m%d-%H%M%S')}.log")
    print(f"running {args.pipeline} locally (kfp SubprocessRunner, {options['parallelism']} vectors at once, "
          f"{threads} thread(s) per step) -> {args.root}" + (f"; details in {log}" if log else ""), flush=True)
    try:
        run = pr.run_local(fn, params, args.root, threads_per_task=threads, log=log, cache=args.cache)
    except pr.PipelineError as exc:
        raise UserError(str(exc)) from None
    if run.cached:
        print(f"taken from the cache (not run again): {', '.join(run.cached)}")
    summary = pr.summarize_study(run, fn) if args.pipeline == "ser_study" else run.to_dict()
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    elif args.pipeline == "ser_study":
        print(pr.format_summary(summary))
    else:
        print(f"{args.pipeline} ran locally in {run.seconds:.0f} s; run folder {run.run_dir}")
        for task, outputs in run.tasks.items():
            print(f"  {task}: " + ", ".join(f"{k}={v}" for k, v in outputs.items()))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from ser.kubeflow import runner as pr

    host = args.host or os.environ.get("KFP_HOST")
    if not host:
        raise UserError("no KFP endpoint: pass --host URL or set KFP_HOST")
    try:
        fn = pr.build(args.pipeline, **_options(args))
        params = {**(pr.preset_params(args.preset, fn) if args.preset else {}), **pr.parse_params(args.param, fn)}
        info = pr.submit(host, fn, params, experiment=args.experiment, namespace=args.namespace, token=args.token,
                         run_name=args.run_name, service_account=args.service_account or None,
                         enable_caching=False if args.no_cache else None)
    except pr.PipelineError as exc:
        raise UserError(str(exc)) from None
    print(f"submitted {info['pipeline']} to {host}: run {info['run_id']} in experiment {info['experiment']}")
    if info.get("url"):
        print(f"  {info['url']}")
    if params:
        print("  parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    sys.stdout.flush()
    return 0
