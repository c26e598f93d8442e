"""The pipelines: both compile, GPU steps (and only they) carry the V100 node-pool
settings, S3 steps the artifact-store secret; and ser_study runs end to end locally
(kfp SubprocessRunner) against a real S3 server and MLflow with the smallest budgets
(registering, gating and publishing both models), then ser_retrain promotes and
publishes only a model that beats the registry's champion.
(No `from __future__ import annotations` here: KFP reads the pipelines' annotations.)
"""

import json
from pathlib import Path

import pytest
import yaml

from ser.ops import gpu, images
from ser.kubeflow import runner as pr
from ser.cli import main
from tests.servers import mlflow_server, s3_server  # noqa: F401

GPU_STEPS = {"train-folds", "final-train", "transfer", "cross-validate"}
S3_STEPS = {"data-fingerprint", "ingest", "compare-champion", "publish"}


def _load(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def _component_of(executor: str) -> str:
    """exec-train-folds-3 -> train-folds."""
    name = executor.removeprefix("exec-")
    parts = name.split("-")
    return "-".join(parts[:-1]) if parts[-1].isdigit() else name


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    assert main(["pipeline", "compile", "--out", str(out)]) == 0
    return {name: _load(out / f"{name}.yaml") for name in pr.PIPELINE_NAMES}


@pytest.mark.parametrize("name", pr.PIPELINE_NAMES)
def test_gpu_steps_carry_the_v100_settings_and_cpu_steps_do_not(compiled, name):
    spec, platform = compiled[name]
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    seen_gpu = set()
    for executor, body in executors.items():
        component = _component_of(executor)
        container = body["container"]
        accel = (container.get("resources") or {}).get("accelerator")
        settings = k8s.get(executor, {})
        if component in GPU_STEPS:
            seen_gpu.add(component)
            assert container["image"] == images.GPU_IMAGE
            assert accel["resourceType"] == gpu.GPU_RESOURCE and str(accel["resourceCount"]) == "1"
            assert settings["nodeSelector"]["labels"] == gpu.V100_NODE_SELECTOR
            assert settings["tolerations"] == [dict(t) for t in gpu.GPU_TOLERATIONS]
        else:
            assert container["image"] == images.CPU_IMAGE, executor
            assert accel is None, executor
            assert "nodeSelector" not in settings and "tolerations" not in settings, executor
        if component in S3_STEPS:
            (secret,) = settings["secretAsEnv"]
            assert secret["secretName"] == "mlpipeline-minio-artifact"
            assert {m["secretKey"]: m["envVar"] for m in secret["keyToEnv"]} == {"accesskey": "AWS_ACCESS_KEY_ID",
                                                                                 "secretkey": "AWS_SECRET_ACCESS_KEY"}
        else:
            assert "secretAsEnv" not in settings, executor
        command = " ".join(container["command"])
        assert "pip install" not in command  # the images carry ser and kfp
    assert seen_gpu == {"ser_study": {"train-folds", "final-train", "transfer"}, "ser_retrain": {"final-train"},
                        "ser_cv": {"cross-validate"}}[name]


def test_study_fans_out_with_a_parallelism_limit_and_budget_parameters(compiled):
    spec, _ = compiled["ser_study"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    for budget in ("recipe", "trials_stage1", "trials_stage2", "trials_stage3", "search_epochs", "stage4_epochs", "final_epochs",
                   "transfer_epochs", "folds"):
        assert budget in params
    tasks = spec["root"]["dag"]["tasks"]
    loops = {name: t for name, t in tasks.items() if "iteratorPolicy" in t}
    assert len(loops) == 4  # one ParallelFor per search stage
    assert {t["iteratorPolicy"]["parallelismLimit"] for t in loops.values()} == {8}
    ranks = [t for name, t in tasks.items() if name.startswith("rank-stage")]
    assert len(ranks) == 4


def test_the_study_preset_carries_the_studys_transfer_budgets_to_the_transfer_step(compiled):
    """`--preset study`: every subset, the 7-LR x 4-batch grid, cells scored by 5-fold CV,
    a 2000-epoch final model; the transfer step receives them as its inputs."""
    spec, _ = compiled["ser_study"]
    params = pr.preset_params("study", pr.build("ser_study"))
    assert params["transfer_freeze"] == "a,b,c,d,e,f,g" and params["transfer_batches"] == "16,32,48,64"
    assert (params["transfer_cv_folds"], params["transfer_final_epochs"], params["transfer_epochs"]) == (5, 2000, 150)
    assert "2.68e-05" in params["transfer_lrs"].split(",") and len(params["transfer_lrs"].split(",")) == 7
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) <= set(inputs)
    assert inputs["transfer_cv_folds"]["defaultValue"] == 0  # the pipeline's own default stays the quick test-split scoring
    transfer_task = spec["root"]["dag"]["tasks"]["transfer"]["inputs"]["parameters"]
    for step_input, pipeline_param in (("cv_folds", "transfer_cv_folds"), ("final_epochs", "transfer_final_epochs"),
                                       ("freeze", "transfer_freeze"), ("lrs", "transfer_lrs")):
        assert transfer_task[step_input]["componentInputParameter"] == pipeline_param
    with pytest.raises(pr.PipelineError, match="unknown preset"):
        pr.preset_params("fast")


def test_the_runner_finds_outputs_by_the_pipelines_own_names(compiled):
    """ser_study names the outputs worth pointing at; each is a task of the compiled
    pipeline with that output artifact, so no folder name is hard-coded in the runner."""
    spec, _ = compiled["ser_study"]
    tasks = _tasks(spec)
    named = pr.build("ser_study").named_outputs
    assert {"final_model", "english_evaluation", "greek_model", "ranking_stage4", "published", "greek_published"} <= set(named)
    for key, (task, output) in named.items():
        assert task in tasks, key
        component = spec["components"][tasks[task]["componentRef"]["name"]]
        assert output in component["outputDefinitions"]["artifacts"], key


def test_the_demo_budgets_are_recipe_files_the_pipeline_takes():
    """`ser demo` and `--preset demo|smoke` read src/ser/recipes/pipeline/{demo,smoke}.yaml;
    every key is a parameter of ser_study (an unknown one is refused by name)."""
    study = pr.build("ser_study")
    demo, smoke = pr.preset_params("demo", study), pr.preset_params("smoke", study)
    assert set(smoke) == set(demo) and demo["recipe"] == smoke["recipe"] == "demo"
    assert smoke["final_epochs"] < demo["final_epochs"] and smoke["search_epochs"] <= demo["search_epochs"]
    assert pr.demo_arguments({}, None)["final_epochs"] == demo["final_epochs"]
    cv = pr.build("ser_cv")
    demo_cv, smoke_cv = pr.preset_params("demo-cv", cv), pr.preset_params("smoke-cv", cv)
    assert demo_cv["recipe"] == smoke_cv["recipe"] == "plus" and smoke_cv["epochs"] < demo_cv["epochs"]
    with pytest.raises(pr.PipelineError, match="does not take"):
        pr.preset_params("demo-cv", study)  # a preset of another pipeline is refused by name


def test_run_local_refuses_a_preset_of_another_pipeline_with_one_line(capsys):
    assert main(["pipeline", "run-local", "--pipeline", "ser_study", "--preset", "demo-cv", "--root", "/nonexistent"]) == 2
    assert "preset demo-cv sets" in capsys.readouterr().err


def test_retrain_publishes_only_under_a_condition(compiled):
    spec, _ = compiled["ser_retrain"]
    tasks = spec["root"]["dag"]["tasks"]
    (cond,) = [t for t in tasks.values() if "triggerPolicy" in t]
    assert "compare-champion" in cond["triggerPolicy"]["condition"]
    inner = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"publish"}


def test_builders_take_images_and_parallelism(tmp_path):
    fn = pr.build("ser_study", cpu_image="reg/cpu:1", gpu_image="reg/gpu:1", parallelism=3)
    spec, _ = _load(pr.compile_pipeline(fn, tmp_path / "s.yaml"))
    found = {b["container"]["image"] for b in spec["deploymentSpec"]["executors"].values()}
    assert found == {"reg/cpu:1", "reg/gpu:1"}
    assert {t["iteratorPolicy"]["parallelismLimit"] for t in spec["root"]["dag"]["tasks"].values() if "iteratorPolicy" in t} == {3}


def test_unknown_pipeline_is_refused():
    with pytest.raises(pr.PipelineError, match="unknown pipeline"):
        pr.build("ser_nothing")


# --------------------------------------------------------------------------- integration: the whole study, locally

DATA, MODELS = "ser-data-pipelines", "ser-models-pipelines"
EN, GR = "ser-english-pt", "ser-greek-pt"  # names of their own on the session's shared MLflow


@pytest.fixture(scope="module")
def study_run(s3_server, mlflow_server, tmp_path_factory):  # noqa: F811
    """ser_study, run once through kfp.local on the tiny synthetic corpora."""
    work = tmp_path_factory.mktemp("study")
    store = s3_server.store()
    corpora = pr.upload_demo_corpora(store, work, bucket=DATA, english_per_class=6, greek_per_class=5)
    store.ensure_bucket(MODELS)
    env = {**s3_server.env(), **mlflow_server.env(), "MLFLOW_EXPERIMENT_NAME": "pipelines-test"}
    args = pr.demo_arguments(corpora, pr.preset_params("smoke"), model_bucket=MODELS, model_name=EN, greek_model_name=GR,
                             mlflow_uri=mlflow_server.url, mlflow_experiment="pipelines-test")
    run = pr.run_local(pr.build("ser_study", parallelism=2), args, work / "local_outputs", env=env, threads_per_task=1,
                       log=work / "study.log", echo=False)
    return {"run": run, "summary": pr.summarize_study(run), "corpora": corpora, "store": store}


@pytest.mark.integration
def test_study_runs_end_to_end_locally(study_run, mlflow_server):  # noqa: F811
    run, summary, store = study_run["run"], study_run["summary"], study_run["store"]
    arts = summary["artifacts"]
    assert set(arts) == set(pr.build("ser_study").named_outputs)  # every step ran and left its outputs
    for stage in (1, 2, 3, 4):
        assert (Path(arts[f"ranking_stage{stage}"]) / "ranking.csv").is_file()
    assert (Path(arts["ranking_stage4"]) / "winner.json").is_file()
    assert (Path(arts["final_model"]) / "model.pt").is_file()
    assert summary["english_scores"]["macro_f1"] is not None and summary["greek_scores"]["macro_f1"] is not None
    gr = json.loads((Path(arts["greek_evaluation"]) / "metrics.json").read_text())
    assert len(gr["labels"]) == 5
    fan_out = [t for t in run.tasks if "/train-folds" in t]
    assert len(fan_out) >= 4  # every stage trained at least one vector inside its ParallelFor
    for key, name in (("published", EN), ("greek_published", GR)):
        pub = summary[key]
        assert pub["promoted"] and pub["champion_uri"] == f"s3://{MODELS}/{name}/champion"
        keys = {k for k, _ in store.list(MODELS, name)}
        assert f"{name}/champion/model-store/{name}.mar" in keys and f"{name}/registry/champion.json" in keys
    # MLflow: the parent run and the step runs nested under it
    import mlflow

    client = mlflow.MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("pipelines-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ser.pipeline")]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.data.tags.get("ser.kind") for r in children} >= {"stage", "final", "transfer"}
    for name in (EN, GR):  # registered, and champion since there was none
        assert client.get_model_version_by_alias(name, "champion").version == "1"
    text = pr.format_summary(summary)
    assert "final_model" in text and f"published {EN}" in text and f"published {GR}" in text


@pytest.mark.integration
def test_retrain_publishes_only_a_better_model(study_run, s3_server, mlflow_server, tmp_path):  # noqa: F811
    """The champion the study registered vs a retrained model of a fixed (tiny) config:
    scored on the same test rows; the registry's champion moves, and the publish step
    runs, only if the candidate wins."""
    import mlflow

    client = mlflow.MlflowClient(mlflow_server.url)
    store, corpora = study_run["store"], study_run["corpora"]
    before = {k for k, _ in store.list(MODELS, EN)}
    champion = json.loads(Path(study_run["summary"]["artifacts"]["published"], "champion.json").read_text())
    args = {"data_bucket": corpora["data_bucket"], "english_corpora": corpora["english_corpora"], "select": "all",
            "augment_corpora": "synthetic-ravdess", "feature_kind": "mel", "feature_size": "30",
            "config": {"arch": {"cnn": "squirtle", "conv_channels": [4, 4, 4], "fc_features": [8, 8], "pool_kernels": [2, 3, 3]},
                       "train": {"batch_size": 8, "lr": 1e-3}},
            "epochs": 1, "eval_every": 1, "device": "cpu", "model_bucket": MODELS, "model_name": EN,
            "mlflow_uri": mlflow_server.url, "mlflow_experiment": "pipelines-test"}
    run = pr.run_local(pr.build("ser_retrain"), args, tmp_path / "out", env=s3_server.env(), threads_per_task=2,
                       log=tmp_path / "retrain.log", echo=False)
    verdict = json.loads(Path(run.tasks["compare-champion"]["verdict"]).read_text())
    assert verdict["champion_version"] == champion["version"] and verdict["champion"] >= 0
    assert verdict["promote"] == (verdict["candidate"] > verdict["champion"])  # the gate's rule, whichever way it went
    now = client.get_model_version_by_alias(EN, "champion").version
    assert now == (verdict["registry_version"] if verdict["promote"] else champion["version"])
    after = {k for k, _ in store.list(MODELS, EN)}
    assert ("publish" in run.tasks) == verdict["promote"] and (after > before) == verdict["promote"]
    # The same retrain again (same seed, data and config: the same candidate) now meets
    # a champion at least as good as itself, so it must NOT be promoted, whichever
    # way the first run went: dsl.If skips publish and nothing changes in S3.
    again = pr.run_local(pr.build("ser_retrain"), args, tmp_path / "out2", env=s3_server.env(), threads_per_task=2,
                         log=tmp_path / "retrain2.log", echo=False)
    second = json.loads(Path(again.tasks["compare-champion"]["verdict"]).read_text())
    assert second["candidate"] == pytest.approx(verdict["candidate"])
    assert not second["promote"] and "publish" not in again.tasks
    assert {k for k, _ in store.list(MODELS, EN)} == after
    assert client.get_model_version_by_alias(EN, "champion").version == now
    # the S3 pointer names the registry's champion
    pointer = json.loads(store.client.get_object(MODELS, f"{EN}/registry/champion.json").read())
    assert pointer["version"] == now


# ------------------------------------------- caching, resources, retries, time limits (compiled YAML)
#: Steps that look at the outside world, run on every pipeline run.
UNCACHED = {
    "ser_study": {"data-fingerprint", "data-fingerprint-2", "mlflow-run", "compare-champion", "compare-champion-2",
                  "publish", "publish-2", "link-runs"},
    "ser_retrain": {"data-fingerprint", "compare-champion", "publish"},
    "ser_cv": {"data-fingerprint"},
}
#: Steps that talk to S3 or MLflow (and so retry with backoff).
IO_STEPS = {"data-fingerprint", "ingest", "mlflow-run", "train-folds", "final-train", "transfer", "evaluate", "compare-champion",
            "publish", "link-runs", "cross-validate"}


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline (root DAG and nested DAGs: loops, conditions) with
    ``deps``: the tasks it waits for, its enclosing DAG task's included."""
    components = spec["components"]
    out: dict[str, dict] = {}

    def walk(dag: dict, inherited: set[str]) -> None:
        for name, task in dag["tasks"].items():
            deps = set(task.get("dependentTasks", [])) | inherited
            comp = components[task["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"], deps | {name})
            else:
                out[name] = {**task, "deps": deps}

    walk(spec["root"]["dag"], set())
    return out


def _ancestors(tasks: dict[str, dict], name: str) -> set[str]:
    """Every task ``name`` transitively waits for (DAG tasks forward their own dependencies)."""
    seen, todo = set(), list(tasks[name]["deps"])
    while todo:
        dep = todo.pop()
        if dep in seen:
            continue
        seen.add(dep)
        if dep in tasks:
            todo += tasks[dep]["deps"]
    return seen


@pytest.mark.parametrize("name", pr.PIPELINE_NAMES)
def test_only_outside_world_steps_are_uncached_and_no_tracking_id_reaches_a_cached_step(compiled, name):
    spec, _platform = compiled[name]
    tasks = _tasks(spec)
    uncached = {t for t, body in tasks.items() if not body.get("cachingOptions", {}).get("enableCache")}
    assert uncached == UNCACHED[name]
    for task, body in tasks.items():
        if task in uncached:
            continue
        upstream = _ancestors(tasks, task)
        # a data fingerprint is content (same data -> same value); run ids and verdicts are not
        assert not (upstream & (uncached - {"data-fingerprint", "data-fingerprint-2"})), (task, upstream & uncached)
        params = json.dumps(body.get("inputs", {}))
        assert "parent_run" not in params and "mlflow-run" not in params, task


#: KFP placeholders whose value changes from run to run (dsl.PIPELINE_JOB_*_PLACEHOLDER, PIPELINE_TASK_*,
#: the create and schedule times) and Argo's: none may reach what keys a cached step.
RUN_SPECIFIC = ("{{$.pipeline_job", "{{$.pipeline_task", "{{$.pipeline_root", "{{workflow.", "{{pod.")


def _input_sources(body: dict) -> list[tuple[str, str, object]]:
    """(input name, kind, value) of every parameter and artifact input of a task."""
    inputs = body.get("inputs", {})
    out = []
    for group in ("parameters", "artifacts"):
        for key, source in (inputs.get(group) or {}).items():
            for kind, value in source.items():
                out.append((key, kind, value))
    return out


@pytest.mark.parametrize("name", pr.PIPELINE_NAMES)
def test_what_keys_a_cached_step_holds_no_run_specific_value(compiled, name):
    """The KFP cache key of a step is its component (image, command, args), its env and its
    input values: for every cacheable step each input is a pipeline parameter, a loop item,
    a constant without a run-specific placeholder, or an output of a cached step (or of the
    content-only data fingerprint); the executor's command, args and env hold no placeholder
    either, and no pipeline parameter defaults to one."""
    spec, _platform = compiled[name]
    tasks = _tasks(spec)
    cached = {t for t, body in tasks.items() if body.get("cachingOptions", {}).get("enableCache")}
    content = {"data-fingerprint", "data-fingerprint-2"}
    executors = spec["deploymentSpec"]["executors"]
    assert cached, name
    for task in cached:
        body = tasks[task]
        for key, kind, value in _input_sources(body):
            assert kind in {"componentInputParameter", "componentInputArtifact", "taskOutputParameter",
                            "taskOutputArtifact", "runtimeValue", "parameterExpressionSelector"}, (task, key, kind)
            if kind in ("taskOutputParameter", "taskOutputArtifact"):
                producer = value["producerTask"]
                assert producer in cached | content or producer not in tasks, (task, key, producer)
            text = json.dumps(value)
            assert not any(p in text for p in RUN_SPECIFIC), (task, key, text)
        executor = spec["components"][body["componentRef"]["name"]]["executorLabel"]
        container = json.dumps(executors[executor]["container"])
        assert not any(p in container for p in RUN_SPECIFIC), (task, executor)
    defaults = json.dumps(spec["root"].get("inputDefinitions", {}))
    assert not any(p in defaults for p in RUN_SPECIFIC)


@pytest.mark.parametrize("name", pr.PIPELINE_NAMES)
def test_every_step_has_requests_limits_a_time_limit_and_io_steps_retry(compiled, name):
    spec, platform = compiled[name]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for executor, body in spec["deploymentSpec"]["executors"].items():
        res = body["container"].get("resources") or {}
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert key in res, (executor, key)
        assert res["cpuLimit"] >= res["cpuRequest"] and res["memoryLimit"] >= res["memoryRequest"], executor
        if _component_of(executor) in GPU_STEPS:
            assert str(res["accelerator"]["resourceCount"]) == "1", executor  # a GPU limit
        assert int(k8s[executor]["activeDeadlineSeconds"]) > 0, executor
    for task, body in _tasks(spec).items():
        retry = body.get("retryPolicy")
        if _component_of(f"exec-{task}") in IO_STEPS:
            assert retry and retry["maxRetryCount"] >= 2 and retry["backoffFactor"] > 1, task
            assert retry["backoffDuration"].endswith("s") and retry["backoffMaxDuration"].endswith("s"), task
        else:
            assert retry is None, task  # pure computation: a retry would only repeat the failure


# ------------------------------------------- caching, for real: a kfp.local rerun (kfp >= 2.17 caches locally)
@pytest.mark.integration
def test_a_rerun_takes_every_cacheable_step_from_the_cache(s3_server, tmp_path):  # noqa: F811
    """ser_retrain twice on the same data and parameters with kfp.local's cache on: the
    second run executes only the steps that look at the outside world (the compiled
    YAML's uncached set); ingest, augment, features, final training and evaluation are
    cache hits and leave no folder, and the rerun sees the first run's model."""
    store = s3_server.store()
    corpora = pr.upload_demo_corpora(store, tmp_path / "data", bucket="ser-data-cache", english_per_class=4, greek_per_class=2)
    store.ensure_bucket("ser-models-cache")
    args = {"data_bucket": corpora["data_bucket"], "english_corpora": corpora["english_corpora"], "select": "all",
            "augment_corpora": "synthetic-ravdess", "feature_kind": "mel", "feature_size": "30",
            "config": {"arch": {"cnn": "squirtle", "conv_channels": [4, 4, 4], "fc_features": [8, 8], "pool_kernels": [2, 3, 3]},
                       "train": {"batch_size": 8, "lr": 1e-3}},
            "epochs": 1, "eval_every": 1, "device": "cpu", "model_bucket": "ser-models-cache", "model_name": "cache-test",
            "mlflow_uri": ""}
    root = tmp_path / "out"

    def run(i: int):
        return pr.run_local(pr.build("ser_retrain"), args, root, env=s3_server.env(), threads_per_task=2,
                            log=tmp_path / f"run{i}.log", echo=False, cache=True)

    first = run(1)
    assert first.cached == ()
    ran_first = {rel.split("/")[-1] for rel in collect_task_dirs(first.run_dir)}
    # No MLflow here, so no registry to record a champion in: nothing is promoted or published (ser.champion)
    assert {"data-fingerprint", "ingest", "augment", "features", "final-train", "evaluate", "compare-champion"} <= ran_first
    assert "publish" not in ran_first
    second = run(2)
    ran_second = {rel.split("/")[-1] for rel in collect_task_dirs(second.run_dir)}
    assert ran_second == {"data-fingerprint", "compare-champion"}, ran_second
    assert ran_second <= UNCACHED["ser_retrain"]
    assert set(second.cached) == {"ingest", "augment", "features", "final-train", "evaluate"}
    assert second.output("final-train", "model") == first.output("final-train", "model")  # the first run's model
    verdict = json.loads(Path(second.tasks["compare-champion"]["verdict"]).read_text())
    assert not verdict["promote"]


def collect_task_dirs(run_dir: Path) -> list[str]:
    """Task folders a local run made (those kfp.local executed)."""
    return [m.parent.relative_to(run_dir).as_posix() for m in run_dir.rglob("executor_output.json")]


# ------------------------------------------- ser_cv: a recipe over speaker folds, locally
@pytest.mark.integration
def test_cv_pipeline_cross_validates_a_recipe_and_shows_its_scores(s3_server, mlflow_server, tmp_path):  # noqa: F811
    """ser_cv through kfp.local on the synthetic English corpus in S3: the plus recipe over 2
    speaker groups; the step's KFP metrics are the fold summary's mean and std, its
    confusion matrix counts every row once, its ensemble serves, and its MLflow run is in
    the pipeline's experiment."""
    from mlflow.tracking import MlflowClient

    from ser.study import models

    store = s3_server.store()
    corpora = pr.upload_demo_corpora(store, tmp_path / "data", bucket="ser-data-cv", english_per_class=4, greek_per_class=2)
    args = {"data_bucket": corpora["data_bucket"], "corpora": corpora["english_corpora"], "recipe": "plus", "labels": "english",
            "folds": 2, "seeds": 2, "epochs": 2, "overrides": "augment.mixup=0;model.pooling=attention", "device": "cpu",
            "mlflow_uri": mlflow_server.url, "mlflow_experiment": "cv-pipeline-test"}
    run = pr.run_local(pr.build("ser_cv"), args, tmp_path / "out", env={**s3_server.env(), **mlflow_server.env()}, threads_per_task=2,
                       log=tmp_path / "cv.log", echo=False)
    summary = json.loads((run.output("cross-validate", "results") / "summary.json").read_text())
    assert summary["protocol"] == "2-fold speaker groups" and len(summary["folds"]) == 4  # 2 folds x 2 seeds
    shown = run.metadata["cross-validate"]["metrics"]
    assert shown["ua_mean"] == pytest.approx(summary["summary"]["ua"]["mean"])
    assert shown["macro_f1_std"] == pytest.approx(summary["summary"]["macro_f1"]["std"])
    assert shown["seed_ensemble_ua_mean"] == pytest.approx(summary["seed_ensemble"]["summary"]["ua"]["mean"])
    matrix = run.metadata["cross-validate"]["confusion"]["confusionMatrix"]
    assert sum(sum(row["row"]) for row in matrix["rows"]) == 2 * 28  # 7 classes x 4 utterances, each tested once per seed
    saved = yaml.safe_load((run.output("cross-validate", "results") / "recipe.yaml").read_text())
    assert saved["augment"]["mixup"] == 0 and saved["model"]["pooling"] == "attention"
    bundle = models.load_bundle(run.output("cross-validate", "ensemble") / "model.pt")
    assert isinstance(bundle.arch, models.EnsembleSpec) and len(bundle.arch.members) == 2
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("cv-pipeline-test")
    (tracked,) = client.search_runs([experiment.experiment_id], "tags.`ser.kind` = 'cv'")
    assert tracked.data.metrics["ua_mean"] == pytest.approx(summary["summary"]["ua"]["mean"])
    assert tracked.data.metrics["seed_ensemble_wa_mean"] == pytest.approx(summary["seed_ensemble"]["summary"]["wa"]["mean"])
