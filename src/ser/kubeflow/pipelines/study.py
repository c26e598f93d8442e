"""``ser_study``: the whole study as one Kubeflow pipeline (METHOD.md sections 1-7).

ingest English + Greek corpora (S3) -> augment TESS -> features (English, Greek)
-> search recipe (and stage 1's vectors) -> for stages 1..4: train each vector's
folds in a ParallelFor (at most ``parallelism`` at once, GPU node pool), rank the
collected results (and plan the next stage's vectors) -> final training of the
winner -> evaluate -> Greek transfer -> evaluate -> for each language: register in
MLflow and gate against the registry's champion (ser.adapters.champion) -> publish: archive to
S3, whose serving copy follows the registry (ser-english, ser-greek).

Caching: every step that depends only on data and parameters is cacheable; the
uncached ones are those that look at the outside world (data fingerprint, MLflow
parent run, champion comparison, publication, run linking), and no id they make
flows into a cached step (tests/test_pipelines.py checks the compiled YAML). Every
step has CPU and memory requests and limits (GPU steps a GPU limit), a time limit,
and steps that talk to S3 or MLflow retry with exponential backoff.

Budgets are parameters: the recipe (``study`` or ``demo``, or YAML text), vectors
per stage (``trials_stage1..3``, 0 = the recipe's), ``search_epochs`` (maximum of the
early-stopped stages), ``stage4_epochs``, ``final_epochs``, ``transfer_epochs``.
"""

from kfp import dsl

from ser.kubeflow.components import augment, evaluate, features, final_train, ingest, plan, publish, rank, track, train_folds, transfer
from ser.kubeflow.components._common import CPU_IMAGE, GPU_IMAGE, cpu_resources, on_v100, retry_io, time_limit, with_s3_keys

#: Stages of the study's search (the recipe must have stages 1..STAGES).
STAGES = 4
#: Parameter vectors trained at once per stage (one GPU each on a cluster).
PARALLELISM = 8

DEFAULT_ENGLISH = "ravdess=corpora/ravdess,tess=corpora/tess,savee=corpora/savee,cremad=corpora/cremad"
DEFAULT_GREEK = "aesdd=corpora/aesdd"


def build_study(cpu_image: str = CPU_IMAGE, gpu_image: str = GPU_IMAGE, parallelism: int = PARALLELISM, stages: int = STAGES):
    """The ``ser_study`` pipeline on these images, with this fan-out limit."""
    ingest_op, augment_op, features_op = ingest.op(cpu_image), augment.op(cpu_image), features.op(cpu_image)
    track_op, recipe_op, rank_op = track.op(cpu_image), plan.recipe_op(cpu_image), rank.op(cpu_image)
    fingerprint_op, link_op = ingest.fingerprint_op(cpu_image), track.link_op(cpu_image)
    folds_op, final_op, transfer_op = train_folds.op(gpu_image), final_train.op(gpu_image), transfer.op(gpu_image)
    evaluate_op, compare_op, publish_op = evaluate.op(cpu_image), publish.compare_op(cpu_image), publish.op(cpu_image)
    named: dict[str, tuple] = {}  # the pipeline's own names for outputs worth pointing at: (task, output)

    @dsl.pipeline(
        name="ser-study",
        description="Speech emotion recognition study: corpora from S3 -> features -> four-stage random search with "
        "k-fold CV and early stopping -> final training -> Greek transfer -> publish both models.",
    )
    def ser_study(
        data_bucket: str = "ser-data",
        english_corpora: str = DEFAULT_ENGLISH,
        greek_corpora: str = DEFAULT_GREEK,
        select: str = "study",
        augment_corpora: str = "tess",
        augment_mode: str = "replace",
        feature_kinds: str = "mel,chroma,mfcc",
        feature_sizes: str = "30,50,60,80",
        recipe: str = "study",
        seed: int = 0,
        folds: int = 0,
        trials_stage1: int = 0,
        trials_stage2: int = 0,
        trials_stage3: int = 0,
        search_epochs: int = 0,
        stage4_epochs: int = 0,
        final_epochs: int = 600,
        final_eval_every: int = 10,
        transfer_freeze: str = "g",
        transfer_lrs: str = "2.68e-5",
        transfer_batches: str = "48",
        transfer_epochs: int = 150,
        transfer_eval_every: int = 10,
        transfer_cv_folds: int = 0,
        transfer_final_epochs: int = 0,
        device: str = "auto",
        model_bucket: str = "ser-models",
        model_name: str = "ser-english",
        greek_model_name: str = "ser-greek",
        s3_endpoint: str = "http://seaweedfs.kubeflow:8333",
        mlflow_uri: str = "http://mlflow.kubeflow:5000",
        mlflow_experiment: str = "ser",
    ):
        # ---- data: an uncached fingerprint of the bucket keys the cached ingest steps
        en_fp = fingerprint_op(data_bucket=data_bucket, corpora=english_corpora, s3_endpoint=s3_endpoint)
        en_fp.set_display_name("fingerprint English data").set_caching_options(False)
        gr_fp = fingerprint_op(data_bucket=data_bucket, corpora=greek_corpora, s3_endpoint=s3_endpoint)
        gr_fp.set_display_name("fingerprint Greek data").set_caching_options(False)
        en = ingest_op(data_bucket=data_bucket, corpora=english_corpora, select=select, seed=seed, s3_endpoint=s3_endpoint,
                       fingerprint=en_fp.output)
        en.set_display_name("ingest English")
        gr = ingest_op(data_bucket=data_bucket, corpora=greek_corpora, select="all", seed=seed, s3_endpoint=s3_endpoint,
                       fingerprint=gr_fp.output)
        gr.set_display_name("ingest Greek")
        aug = augment_op(table=en.outputs["table"], corpora=augment_corpora, mode=augment_mode, seed=seed)
        aug.set_display_name("augment TESS")
        en_feat = features_op(table=aug.outputs["augmented"], corpus=en.outputs["table"], kinds=feature_kinds, sizes=feature_sizes, labels="english")
        en_feat.set_display_name("features English")
        gr_feat = features_op(table=gr.outputs["table"], corpus=gr.outputs["table"], kinds=feature_kinds, sizes=feature_sizes, labels="greek")
        gr_feat.set_display_name("features Greek")
        for task in (en_fp, gr_fp, en, gr):
            with_s3_keys(task)
            retry_io(task)
        for task in (en_fp, gr_fp):
            cpu_resources(task, cpu="250m", memory="512M")
            time_limit(task, minutes=10)
        for task in (en, gr, aug, en_feat, gr_feat):
            cpu_resources(task, cpu="2", memory="8G")
            time_limit(task, minutes=120)

        # ---- search: ParallelFor(train folds) -> rank (which plans the next stage), four times.
        # The MLflow parent run is opened by an uncached step whose id reaches only uncached
        # steps (link, publish): a per-run id in a cached step's inputs would miss the cache.
        run = track_op(name="ser study", mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment)
        run.set_display_name("MLflow run").set_caching_options(False)
        retry_io(run)
        cpu_resources(run, cpu="250m", memory="1G")
        time_limit(run, minutes=10)
        parent = run.output
        rec = recipe_op(recipe=recipe, seed=seed, folds=folds, trials_stage1=trials_stage1, trials_stage2=trials_stage2,
                        trials_stage3=trials_stage3, search_epochs=search_epochs, stage4_epochs=stage4_epochs,
                        features=en_feat.outputs["features"])
        rec.set_display_name("search recipe + stage 1 plan")
        cpu_resources(rec, cpu="1", memory="2G")
        time_limit(rec, minutes=15)
        # Loop items come from a task's single return value ("Output"), and the loop body
        # takes no output parameter of another task: the two forms kfp's local runner handles.
        vectors, ranking = rec.outputs["Output"], None
        for stage in range(1, stages + 1):
            with dsl.ParallelFor(vectors, parallelism=parallelism, name=f"stage-{stage}-vectors") as item:
                fold_task = folds_op(item=item, recipe=rec.outputs["resolved"], features=en_feat.outputs["features"], device=device,
                                     mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment)
                fold_task.set_display_name(f"stage {stage}: train folds")
                on_v100(fold_task)
                retry_io(fold_task)  # it writes to MLflow
                time_limit(fold_task, minutes=360)
            extra = {"previous": ranking} if ranking is not None else {}
            ranked = rank_op(stage=stage, next_stage=stage + 1 if stage < stages else 0, recipe=rec.outputs["resolved"],
                             features=en_feat.outputs["features"], results=dsl.Collected(fold_task.outputs["result"]), **extra)
            ranked.set_display_name(f"stage {stage}: rank" + (f" + stage {stage + 1} plan" if stage < stages else ""))
            named[f"ranking_stage{stage}"] = (ranked, "ranking")
            cpu_resources(ranked, cpu="1", memory="2G")
            time_limit(ranked, minutes=15)
            ranking, vectors = ranked.outputs["ranking"], ranked.outputs["Output"]

        # ---- final model, evaluation, transfer, publication
        final = final_op(features=en_feat.outputs["features"], config={}, feature="", size="0", epochs=final_epochs,
                         eval_every=final_eval_every, seed=-1, device=device, mlflow_uri=mlflow_uri,
                         mlflow_experiment=mlflow_experiment, ranking=ranking)
        final.set_display_name("final training")
        on_v100(final)
        ev_en = evaluate_op(model=final.outputs["model"], features=en_feat.outputs["features"], rows="test", mlflow_uri=mlflow_uri,
                            mlflow_experiment=mlflow_experiment)
        ev_en.set_display_name("evaluate English")
        tr = transfer_op(model=final.outputs["model"], features=gr_feat.outputs["features"], freeze=transfer_freeze, lrs=transfer_lrs,
                         batches=transfer_batches, epochs=transfer_epochs, eval_every=transfer_eval_every, seed=seed, device=device,
                         cv_folds=transfer_cv_folds, final_epochs=transfer_final_epochs, mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment)
        tr.set_display_name("Greek transfer")
        on_v100(tr)
        for task in (final, tr):
            retry_io(task)
            time_limit(task, minutes=720)
        ev_gr = evaluate_op(model=tr.outputs["tuned"], features=gr_feat.outputs["features"], rows="test", mlflow_uri=mlflow_uri,
                            mlflow_experiment=mlflow_experiment)
        ev_gr.set_display_name("evaluate Greek")
        for task in (ev_en, ev_gr):
            retry_io(task)  # its MLflow run
            cpu_resources(task, cpu="2", memory="4G")
            time_limit(task, minutes=60)
        link = link_op(parent_run=parent, mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment, ranking=ranking,
                       model=final.outputs["model"], tuned=tr.outputs["tuned"], evaluated=ev_en.outputs["report"],
                       evaluated_tuned=ev_gr.outputs["report"])
        link.set_display_name("nest MLflow runs").set_caching_options(False)
        retry_io(link)
        cpu_resources(link, cpu="250m", memory="1G")
        time_limit(link, minutes=10)
        # each language's model registered and gated against its own champion, then archived
        published = []
        for lang, model, feats, report, name in (("English", final.outputs["model"], en_feat, ev_en, model_name),
                                                 ("Greek", tr.outputs["tuned"], gr_feat, ev_gr, greek_model_name)):
            cmp = compare_op(model=model, features=feats.outputs["features"], report=report.outputs["report"],
                             model_bucket=model_bucket, name=name, s3_endpoint=s3_endpoint, mlflow_uri=mlflow_uri,
                             mlflow_experiment=mlflow_experiment, parent_run=parent)
            cmp.set_display_name(f"compare {lang} with champion").set_caching_options(False)
            pub = publish_op(model=model, report=report.outputs["report"], verdict=cmp.outputs["verdict"],
                             model_bucket=model_bucket, name=name, s3_endpoint=s3_endpoint, mlflow_uri=mlflow_uri)
            pub.set_display_name(f"publish {lang}").set_caching_options(False)
            pub.after(*published)  # one publication at a time: the registry sees them in order
            published.append(pub)
            prefix = "" if lang == "English" else "greek_"
            named[f"{prefix}champion_verdict"], named[f"{prefix}published"] = (cmp, "verdict"), (pub, "published")
            for task in (cmp, pub):
                with_s3_keys(task)
                retry_io(task)
                cpu_resources(task, cpu="1", memory="4G")
                time_limit(task, minutes=30)

        named.update(english_table=(en, "table"), greek_table=(gr, "table"), augmented_table=(aug, "augmented"),
                     english_features=(en_feat, "features"), greek_features=(gr_feat, "features"), recipe=(rec, "resolved"),
                     final_model=(final, "model"), english_evaluation=(ev_en, "report"), greek_model=(tr, "tuned"),
                     greek_evaluation=(ev_gr, "report"))

    # Task names as the compiler made them ("ingest-2", "rank-stage-3"): the runner finds
    # a local run's outputs through these, never through hard-coded folder names.
    ser_study.named_outputs = {key: (task.name, output) for key, (task, output) in named.items()}
    return ser_study


ser_study = build_study()
