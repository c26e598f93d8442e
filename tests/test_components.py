"""The Kubeflow components, each run locally on tiny data, and the library glue they call.

Unit tests (no server) check ``ser.kubeflow.tasks`` and the component factories.
Integration tests run every component through kfp's SubprocessRunner in small
pipelines whose inputs are imported (``dsl.importer``) from artifacts prepared
in-process, against a real local S3 server (SeaweedFS) for the S3 steps.
(No `from __future__ import annotations` here: KFP reads the pipelines' annotations.)
"""


import json
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Model

from ser.kubeflow.components import augment, evaluate, features, final_train, ingest, plan, publish, rank, track, train_folds, transfer
from ser.kubeflow import runner as pr
from ser.kubeflow import tasks as steps
from ser.data.dataset import FeatureSet
from ser.data.features import FeatureSpec
from ser.ops.images import CPU_IMAGE, GPU_IMAGE
from tests.servers import mlflow_server, s3_server, tracking_env  # noqa: F401

DATA, MODELS = "ser-data-components", "ser-models-components"
TINY_CONFIG = {"arch": {"cnn": "squirtle", "conv_channels": [4, 4, 4], "conv_kernels": [3, 3, 3], "pool_kernels": [2, 3, 3],
                        "pool_strides": [2, 2, 2], "bn_momentum": 0.3, "dropout": 0.3, "fc_features": [16, 8]},
               "train": {"batch_size": 8, "lr": 1e-3}}


# --------------------------------------------------------------------------- unit: glue and factories


def test_parse_pairs_and_lists():
    assert steps.parse_pairs(" ravdess=corpora/ravdess, tess = corpora/tess ") == [("ravdess", "corpora/ravdess"), ("tess", "corpora/tess")]
    with pytest.raises(ValueError, match="NAME=PREFIX"):
        steps.parse_pairs("ravdess")
    with pytest.raises(ValueError, match="nothing given"):
        steps.parse_pairs(" , ")
    assert steps.parse_list("mel, chroma") == ["mel", "chroma"]
    assert steps.parse_list("30,60.0", int) == [30, 60]


def test_tables_keep_paths_relative_to_their_artifact(tmp_path):
    ingest_dir, aug_dir = tmp_path / "ingest", tmp_path / "augment"
    (ingest_dir / "corpora").mkdir(parents=True)
    (aug_dir / "audio").mkdir(parents=True)
    (ingest_dir / "corpora" / "a.wav").write_bytes(b"x")
    (aug_dir / "audio" / "a.aug0.wav").write_bytes(b"y")
    cols = ("path", "corpus", "emotion")
    steps.write_table([{"path": str(ingest_dir / "corpora" / "a.wav"), "corpus": "c", "emotion": "sad"}], ingest_dir, cols)
    assert "corpora/a.wav" in (ingest_dir / "table.csv").read_text()
    steps.write_table([{"path": "corpora/a.wav", "corpus": "c", "emotion": "sad"},
                       {"path": str(aug_dir / "audio" / "a.aug0.wav"), "corpus": "c", "emotion": "sad"}], aug_dir, cols)
    moved = tmp_path / "elsewhere"
    (tmp_path / "augment").rename(moved)  # artifacts move (KFP downloads them elsewhere): relative paths follow
    rows = steps.read_table(moved, [ingest_dir])
    assert [Path(r["path"]) for r in rows] == [ingest_dir / "corpora" / "a.wav", moved / "audio" / "a.aug0.wav"]
    with pytest.raises(FileNotFoundError, match="found under none"):
        steps.read_table(moved)


def _fake_features(folder: Path, kinds=("mel",), size: int = 30, n_per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    labels = ("happy", "angry", "disgust", "fearful", "sad", "neutral", "surprised")
    n = n_per_class * len(labels)
    ids = np.array([f"src{i}" for i in range(n)])
    for kind in kinds:
        fs = FeatureSet(images=rng.random((n, size, size), dtype=np.float32), labels=np.arange(n) % len(labels),
                        label_names=labels, spec=FeatureSpec(kind=kind, size=size), speaker=np.array([f"s{i % 4}" for i in range(n)]),
                        corpus=np.array(["synthetic-ravdess"] * n), source_id=ids, group=ids, augment=np.array([""] * n))
        fs.save(folder / steps.feature_file(kind, size))
    return folder


def test_recipe_budgets_plan_score_and_rank_without_kfp(tmp_path):
    feats = _fake_features(tmp_path / "features", kinds=("mel", "chroma"))
    assert steps.feature_keys(feats) == [("chroma", 30), ("mel", 30)]
    info = steps.resolve_recipe("demo", tmp_path / "recipe", seed=3, folds=2, trials=(1, 2, 1), search_epochs=1, final_stage_epochs=1)
    recipe = steps.load_recipe(tmp_path / "recipe")
    assert info["hash"] == recipe.hash() and recipe.seed == 3 and recipe.folds == 2
    assert recipe.stage(1).vectors == 1 and recipe.stage(2).vectors == 2 and recipe.stage(3).vectors == 1
    assert {recipe.stage(n).max_epochs for n in (1, 2, 3, 4)} == {1}
    items = steps.plan_stage(tmp_path / "recipe", 1, feats)
    assert len(items) == 2 and {i["vector"]["feature"] for i in items} == {"mel", "chroma"}  # one per (cnn, feature, size)
    floated = json.loads(json.dumps(items[0]).replace(": 30,", ": 30.0,"))  # KFP hands ints back as floats
    out = steps.train_folds(feats, tmp_path / "recipe", floated, tmp_path / "v0", device="cpu")
    assert out["id"] == items[0]["id"] and 0.0 <= out["macro_f1"] <= 1.0
    steps.train_folds(feats, tmp_path / "recipe", items[1], tmp_path / "v1", device="cpu")
    ranked = steps.rank_stage(tmp_path / "recipe", 1, [tmp_path / "v0", tmp_path / "v1"], tmp_path / "rank1")
    assert ranked["ranked"] == 2 and (tmp_path / "rank1" / "ranking.csv").is_file() and "Ranking after stage 1" in ranked["markdown"]
    nxt = steps.plan_stage(tmp_path / "recipe", 3, feats, tmp_path / "rank1")
    assert nxt and all(i["stage"] == 3 for i in nxt)


def test_resolve_recipe_takes_yaml_text(tmp_path):
    from ser.study import recipes, search_space

    text = recipes.recipe_text("demo").replace("name: demo", "name: mine")
    info = steps.resolve_recipe(text, tmp_path / "r")
    assert info["name"] == "mine"
    with pytest.raises(search_space.SearchError):
        steps.resolve_recipe("- not a mapping", tmp_path / "r2")


def test_factories_take_the_base_image_and_skip_pip():
    cpu = ingest.op()
    gpu = train_folds.op()
    custom = features.op("registry.example/ser-cpu:test")
    assert cpu.component_spec.implementation.container.image == CPU_IMAGE
    assert gpu.component_spec.implementation.container.image == GPU_IMAGE
    assert custom.component_spec.implementation.container.image == "registry.example/ser-cpu:test"
    for comp in (cpu, gpu, custom, publish.op(), rank.op(), plan.recipe_op(), final_train.op(), transfer.op(), evaluate.op(),
                 publish.compare_op(), augment.op(), track.op()):
        command = " ".join(comp.component_spec.implementation.container.command)
        assert "pip install" not in command, comp.name
        assert "from ser import" in command or "from ser.kubeflow import tasks" in command


# --------------------------------------------------------------------------- integration: each component through kfp.local


@pytest.fixture(scope="module")
def corpora(s3_server, tmp_path_factory):  # noqa: F811
    """Tiny synthetic corpora (RAVDESS 4 per class, AESDD 4 per class) in a data bucket."""
    store = s3_server.store()
    store.ensure_bucket(MODELS)
    work = tmp_path_factory.mktemp("component-corpora")
    params = pr.upload_demo_corpora(store, work, bucket=DATA, english_per_class=4, greek_per_class=4)
    return {"params": params, "work": work}


@pytest.mark.integration
def test_the_demo_takes_a_real_english_corpus(s3_server, tmp_path):  # noqa: F811
    """`ser demo --english ravdess=DIR` (`make demo CORPUS=ravdess`): the folder as
    distributed goes to S3 under its own name and the ingest step parses it as that corpus."""
    from ser.data.corpora import synthetic

    folder = tmp_path / "ravdess"
    synthetic.generate(folder, "ravdess", per_class=2, speakers=2)
    (folder / "SYNTHETIC.txt").unlink()  # now laid out exactly as the real RAVDESS is
    store = s3_server.store()
    params = pr.upload_demo_corpora(store, tmp_path / "work", bucket="ser-data-real", greek_per_class=2, english=("ravdess", folder))
    assert params["english_corpora"] == "ravdess=corpora/ravdess" and params["greek_corpora"].startswith("synthetic=")
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3_server.env().items():
            env.setenv(key, value)
        steps.ingest("ser-data-real", params["english_corpora"], tmp_path / "ingest")
    rows = steps.read_table(tmp_path / "ingest")
    assert len(rows) == 14 and {r["corpus"] for r in rows} == {"ravdess"}
    with pytest.raises(FileNotFoundError, match="ser fetch ravdess"):
        pr.upload_demo_corpora(store, tmp_path / "work", bucket="ser-data-real", english=("ravdess", tmp_path / "missing"))


def test_make_demo_corpus_fetches_then_runs_the_demo_on_it():
    import subprocess

    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # also when run by `make test`
    out = subprocess.run(["make", "-n", "--no-print-directory", "demo", "CORPUS=ravdess", "PY=true", "STAMP=/dev/null"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1], env=env, check=True).stdout.splitlines()
    fetch, demo = ".venv/bin/ser fetch ravdess .ser/data/corpora/ravdess", ".venv/bin/ser demo --recipe study --english ravdess=.ser/data/corpora/ravdess"
    assert fetch in out and demo in out and out.index(fetch) < out.index(demo)
    plus = subprocess.run(["make", "-n", "--no-print-directory", "demo", "RECIPE=plus", "PY=true", "STAMP=/dev/null"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], env=env, check=True).stdout.splitlines()
    assert ".venv/bin/ser demo --recipe plus" in plus


@pytest.fixture(scope="module")
def prepared(corpora, s3_server, tmp_path_factory):  # noqa: F811
    """Every step's output made in-process with ser.kubeflow.tasks (the components' inputs)."""
    root = tmp_path_factory.mktemp("prepared")
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3_server.env().items():
            env.setenv(key, value)
        p = corpora["params"]
        steps.ingest(DATA, p["english_corpora"], root / "ingest")
        steps.ingest(DATA, p["greek_corpora"], root / "ingest-gr")
        steps.augment(root / "ingest", root / "augment", corpora="synthetic-ravdess")
        steps.features(root / "augment", root / "features", kinds="mel", sizes="30", roots=[root / "ingest"], workers=1)
        steps.features(root / "ingest-gr", root / "features-gr", kinds="mel", sizes="30", labels="greek", workers=1)
        steps.final_train(root / "features", root / "model", config=TINY_CONFIG, feature="mel", size=30, epochs=2, eval_every=1, device="cpu")
        steps.evaluate(root / "model", root / "features", root / "eval")
    return root


def _run(pipeline_fn, tmp_path, s3_server, **arguments):  # noqa: F811
    return pr.run_local(pipeline_fn, arguments, tmp_path / "out", env=s3_server.env(), threads_per_task=2,
                        log=tmp_path / "run.log", echo=False)


def _imp(path: Path, cls=Dataset):
    return dsl.importer(artifact_uri=str(path), artifact_class=cls, reimport=False).output


@pytest.mark.integration
def test_ingest_component_downloads_and_scans(corpora, s3_server, tmp_path):  # noqa: F811
    op = ingest.op()

    @dsl.pipeline(name="t-ingest")
    def p(corpora_: str):
        op(data_bucket=DATA, corpora=corpora_, select="all", seed=0, s3_endpoint="")

    run = _run(p, tmp_path, s3_server, corpora_=corpora["params"]["english_corpora"])
    out = run.tasks["ingest"]
    table = Path(out["table"]) / "table.csv"
    rows = table.read_text().splitlines()
    assert len(rows) == 1 + 28 and ",synthetic-ravdess," in rows[1] and rows[1].startswith("corpora/synthetic/")
    assert out["Output"] == "28"
    assert "Synthetic data" in Path(out["summary"]).read_text()


@pytest.mark.integration
def test_augment_and_features_components(prepared, s3_server, tmp_path):  # noqa: F811
    aug_op, feat_op = augment.op(), features.op()

    @dsl.pipeline(name="t-data")
    def p():
        table = _imp(prepared / "ingest")
        a = aug_op(table=table, corpora="synthetic-ravdess", mode="replace", seed=0)
        feat_op(table=a.outputs["augmented"], corpus=table, kinds="mel,mfcc", sizes="30", labels="english")

    run = _run(p, tmp_path, s3_server)
    assert run.tasks["augment"]["Output"] == "28"
    feats = Path(run.tasks["features"]["features"])
    assert steps.feature_keys(feats) == [("mel", 30), ("mfcc", 30)]
    fs = FeatureSet.load(feats / "mel-30.npz")
    assert len(fs) == 56 and (~fs.is_original).sum() == 28 and fs.images.shape[1:] == (30, 30)


@pytest.mark.integration
def test_search_components_recipe_train_folds_rank(prepared, s3_server, tmp_path):  # noqa: F811
    track_op, recipe_op, folds_op, rank_op = track.op(), plan.recipe_op(), train_folds.op(), rank.op()

    @dsl.pipeline(name="t-search")
    def p():
        feats = _imp(prepared / "features")
        run = track_op(name="t", mlflow_uri="", mlflow_experiment="t")
        rec = recipe_op(recipe="demo", seed=0, folds=2, trials_stage1=2, trials_stage2=1, trials_stage3=1, search_epochs=1,
                        stage4_epochs=1, features=feats)
        with dsl.ParallelFor(rec.outputs["Output"], parallelism=2) as item:
            t = folds_op(item=item, recipe=rec.outputs["resolved"], features=feats, device="cpu", mlflow_uri="", mlflow_experiment="t")
        rank_op(stage=1, next_stage=2, recipe=rec.outputs["resolved"], features=feats, results=dsl.Collected(t.outputs["result"]))

    run = _run(p, tmp_path, s3_server)
    assert run.tasks["mlflow-run"]["Output"] == ""  # tracking off: the pipeline goes on untracked
    vectors = json.loads(run.tasks["search-recipe"]["Output"])
    assert len(vectors) == 2 and all(v["stage"] == 1 for v in vectors)
    folds = [t for name, t in run.tasks.items() if name.endswith("/train-folds")]
    assert len(folds) == 2
    for name in (n for n in run.tasks if n.endswith("/train-folds")):
        assert {"macro_f1", "accuracy", "qualified"} <= set(run.metadata[name]["metrics"])
    for t in folds:
        result = json.loads((Path(t["result"]) / "result.json").read_text())
        assert len(result["result"]["folds"]) == 2
        assert "data:image/png;base64" in Path(t["curves"]).read_text()
    ranking = Path(run.tasks["rank-stage"]["ranking"])
    assert (ranking / "ranking.csv").read_text().count("\n") == 3  # header + 2 vectors
    assert "Ranking after stage 1" in Path(run.tasks["rank-stage"]["table"]).read_text()
    assert len(json.loads(run.tasks["rank-stage"]["Output"])) == 1  # stage 2: 1 new vector per combination


@pytest.mark.integration
def test_training_components_final_evaluate_transfer(prepared, s3_server, tmp_path):  # noqa: F811
    final_op, eval_op, transfer_op = final_train.op(), evaluate.op(), transfer.op()

    @dsl.pipeline(name="t-train")
    def p():
        feats, gr = _imp(prepared / "features"), _imp(prepared / "features-gr")
        f = final_op(features=feats, config=TINY_CONFIG, feature="mel", size="30", epochs=2, eval_every=1, seed=0, device="cpu",
                     mlflow_uri="", mlflow_experiment="t")
        eval_op(model=f.outputs["model"], features=feats, rows="test")
        t = transfer_op(model=f.outputs["model"], features=gr, freeze="g", lrs="1e-3", batches="8", epochs=2, eval_every=1, seed=0,
                        device="cpu", mlflow_uri="", mlflow_experiment="t")
        eval_op(model=t.outputs["tuned"], features=gr, rows="test")

    run = _run(p, tmp_path, s3_server)
    model = Path(run.tasks["final-train"]["model"])
    assert (model / "model.pt").is_file() and (model / "learning_curve.png").is_file()
    assert "data:image/png;base64" in Path(run.tasks["final-train"]["curves"]).read_text()
    en = json.loads((Path(run.tasks["evaluate"]["report"]) / "metrics.json").read_text())
    gr = json.loads((Path(run.tasks["evaluate-2"]["report"]) / "metrics.json").read_text())
    assert len(en["labels"]) == 7 and len(gr["labels"]) == 5 and en["rows"] == "test"
    assert float(run.tasks["evaluate"]["Output"]) == pytest.approx(en["macro_f1"])
    # what KFP's UI shows: the scalars of Metrics and the matrix of ClassificationMetrics
    meta = run.metadata["evaluate"]
    assert meta["metrics"]["macro_f1"] == pytest.approx(en["macro_f1"])
    assert len(meta["confusion"]["confusionMatrix"]["rows"]) == 7
    assert {"accuracy", "macro_f1", "best_epoch"} <= set(run.metadata["final-train"]["metrics"])
    assert len(run.metadata["transfer"]["confusion"]["confusionMatrix"]["annotationSpecs"]) == 5


@pytest.mark.integration
def test_compare_and_publish_components(prepared, s3_server, mlflow_server, tmp_path):  # noqa: F811
    """compare_champion registers the candidate and runs the gate in MLflow's registry;
    publish archives it and, only when promoted, makes name/champion/ follow the registry."""
    import mlflow

    compare_op, publish_op = publish.compare_op(), publish.op()
    name = "ser-english-components"

    @dsl.pipeline(name="t-publish")
    def p():
        model, feats, report = _imp(prepared / "model", Model), _imp(prepared / "features"), _imp(prepared / "eval", Artifact)
        c = compare_op(model=model, features=feats, report=report, model_bucket=MODELS, name=name, s3_endpoint="",
                       mlflow_uri=mlflow_server.url, mlflow_experiment="t-publish", parent_run="")
        publish_op(model=model, report=report, verdict=c.outputs["verdict"], model_bucket=MODELS, name=name, s3_endpoint="",
                   mlflow_uri=mlflow_server.url)

    client = mlflow.MlflowClient(mlflow_server.url)
    first = _run(p, tmp_path / "1", s3_server)
    assert first.tasks["compare-champion"]["Output"] == "true"
    verdict = json.loads(Path(first.tasks["compare-champion"]["verdict"]).read_text())
    published = json.loads((Path(first.tasks["publish"]["published"]) / "published.json").read_text())
    assert verdict["registered"] and published["champion_version"] == verdict["registry_version"]
    assert client.get_model_version_by_alias(name, "champion").version == verdict["registry_version"]
    store = s3_server.store()
    keys = {k for k, _ in store.list(MODELS, name)}
    assert f"{name}/champion/config/config.properties" in keys and f"{name}/champion/model-store/{name}.mar" in keys
    assert f"{name}/registry/champion.json" in keys
    assert f"{name}/versions/{published['version']}/model.pt" in keys
    serving = dict(store.list(MODELS, f"{name}/champion"))
    second = _run(p, tmp_path / "2", s3_server)  # the same model again: not better than itself
    assert second.tasks["compare-champion"]["Output"] == "false"
    verdict2 = json.loads(Path(second.tasks["compare-champion"]["verdict"]).read_text())
    assert verdict2["champion"] == pytest.approx(verdict2["candidate"]) and "does not beat" in verdict2["reason"]
    assert "scored on the candidate's" in verdict2["reason"] and verdict2["champion_version"] == verdict["registry_version"]
    assert client.get_model_version_by_alias(name, "champion").version == verdict["registry_version"]
    tags = client.get_model_version(name, verdict2["registry_version"]).tags
    assert tags["promotion.decision"] == "kept champion"
    # published as a version; the serving copy is left as it is
    published2 = json.loads((Path(second.tasks["publish"]["published"]) / "published.json").read_text())
    assert not published2["promoted"] and f"{name}/versions/{published2['version']}/model.pt" in {k for k, _ in store.list(MODELS, name)}
    assert dict(store.list(MODELS, f"{name}/champion")) == serving


@pytest.mark.integration
def test_wrong_key_and_missing_bucket_fail_naming_endpoint_and_bucket(corpora, s3_server, tmp_path):  # noqa: F811
    op = ingest.op()

    @dsl.pipeline(name="t-ingest-error")
    def p(bucket: str):
        op(data_bucket=bucket, corpora=corpora["params"]["english_corpora"], select="all", seed=0, s3_endpoint="")

    bad_key = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    with pytest.raises(pr.PipelineError) as err:
        pr.run_local(p, {"bucket": DATA}, tmp_path / "out", env=bad_key, log=tmp_path / "key.log", echo=False)
    log = (tmp_path / "key.log").read_text()
    assert "ingest" in str(err.value)
    assert f"s3://{DATA}/" in log and s3_server.url in log and "secret key does not match" in log
    with pytest.raises(pr.PipelineError):
        pr.run_local(p, {"bucket": "no-such-bucket"}, tmp_path / "out", env=s3_server.env(), log=tmp_path / "bucket.log", echo=False)
    log = (tmp_path / "bucket.log").read_text()
    assert "bucket 'no-such-bucket' does not exist" in log and s3_server.url in log


# --------------------------------------------------------------------------- cache keys that follow the data, runs linked afterwards


@pytest.mark.integration
def test_data_fingerprint_follows_the_objects_and_ingest_refuses_changed_data(corpora, s3_server, tmp_path, monkeypatch):  # noqa: F811
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    pairs = corpora["params"]["english_corpora"]
    before = steps.data_fingerprint(DATA, pairs)
    assert steps.data_fingerprint(DATA, pairs) == before  # same objects, same key: the ingest step is a cache hit
    name, prefix = steps.parse_pairs(pairs)[0]
    store = s3_server.store()
    extra = tmp_path / "extra.txt"
    extra.write_text("one more object")
    store.put_file(DATA, f"{prefix.strip('/')}/zz-extra/extra.txt", extra)
    try:
        after = steps.data_fingerprint(DATA, pairs)
        assert after != before  # new data, new key: ingest runs again
        with pytest.raises(ValueError, match="changed since the pipeline fingerprinted it"):
            steps.ingest(DATA, pairs, tmp_path / "ingest", fingerprint=before)
        info = steps.ingest(DATA, pairs, tmp_path / "ingest", fingerprint=after)
        assert info["fingerprint"] == after and info["rows"] > 0
    finally:
        store.client.remove_object(DATA, f"{prefix.strip('/')}/zz-extra/extra.txt")
    with pytest.raises(FileNotFoundError, match="holds no objects"):
        steps.data_fingerprint(DATA, "ravdess=corpora/nothing-here")


@pytest.mark.integration
def test_runs_of_cached_steps_are_nested_under_the_pipeline_run_afterwards(tracking_env, tmp_path):  # noqa: F811
    from mlflow.tracking import MlflowClient

    step = tmp_path / "final"
    with steps.tracking_run("", "final training", "final", record_dir=step) as tracker:
        assert tracker.enabled
    child = json.loads((step / steps.RUN_FILE).read_text())["run_id"]
    first = steps.open_pipeline_run("study 1", {})
    assert steps.link_runs(first, [step, None]) == 1
    client = MlflowClient()
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == first
    # a second pipeline run whose step was a cache hit: the run keeps its first parent, the new one lists it
    second = steps.open_pipeline_run("study 2", {})
    assert steps.link_runs(second, [step]) == 1
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == first
    listed = json.loads(Path(client.download_artifacts(second, "linked_runs.json", str(tmp_path))).read_text())
    assert listed == {"nested": [], "reused_from_cache": [child]}
    assert steps.link_runs("", [step]) == 0  # tracking off for the pipeline: nothing to do


@pytest.mark.integration
def test_the_evaluate_steps_run_lands_in_the_pipelines_experiment_and_is_nested(tracking_env, tmp_path):  # noqa: F811
    """The evaluate step's MLflow run goes to the pipeline's experiment (not a default
    one) and the link step nests it under the pipeline's run, as the training runs."""
    from mlflow.tracking import MlflowClient

    from ser import steps as typed
    from ser.adapters import track_runs
    from ser.data.labels import ENGLISH
    from tests.helpers import banded_feature_set

    features = tmp_path / "features"
    features.mkdir()
    fs_path = banded_feature_set(ENGLISH, 70).save(features / steps.feature_file("mel", 30))
    tiny = {"arch": {"conv_channels": [4, 4, 4], "fc_features": [8, 8]}, "train": {"epochs": 1, "batch_size": 16}}
    typed.train(typed.TrainRequest(features=fs_path, out=tmp_path / "model", config=tiny, device="cpu", progress=False),
                track_runs.open_session("off"))
    data = steps.evaluate(tmp_path / "model", features, tmp_path / "eval")
    run_id = json.loads((tmp_path / "eval" / steps.RUN_FILE).read_text())["run_id"]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == tracking_env["MLFLOW_EXPERIMENT_NAME"]
    assert run.data.metrics["macro_f1"] == pytest.approx(data["macro_f1"])
    parent = steps.open_pipeline_run("study", {})
    assert steps.link_runs(parent, [tmp_path / "eval"]) == 1
    assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent
