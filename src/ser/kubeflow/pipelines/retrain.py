"""``ser_retrain``: retrain a fixed configuration on new data and publish it only if it
beats the registered champion on the same test rows.

ingest (S3) -> augment -> features (the config's kind and size) -> final training ->
evaluate -> register in MLflow and gate against the registry's champion (ser.adapters.champion)
-> dsl.If(promoted): publish (archive, and the S3 serving copy follows the registry).
Without MLflow nothing is promoted, so nothing is published.
"""

from kfp import dsl

from ser.kubeflow.components import augment, evaluate, features, final_train, ingest, publish
from ser.kubeflow.components._common import CPU_IMAGE, GPU_IMAGE, cpu_resources, on_v100, retry_io, time_limit, with_s3_keys
from ser.kubeflow.pipelines.study import DEFAULT_ENGLISH


def build_retrain(cpu_image: str = CPU_IMAGE, gpu_image: str = GPU_IMAGE, **_ignored):
    """The ``ser_retrain`` pipeline on these images."""
    ingest_op, augment_op, features_op = ingest.op(cpu_image), augment.op(cpu_image), features.op(cpu_image)
    final_op, evaluate_op = final_train.op(gpu_image), evaluate.op(cpu_image)
    fingerprint_op = ingest.fingerprint_op(cpu_image)
    compare_op, publish_op = publish.compare_op(cpu_image), publish.op(cpu_image)

    @dsl.pipeline(
        name="ser-retrain",
        description="Retrain a fixed configuration on the current data in S3; publish it only if it beats the champion.",
    )
    def ser_retrain(
        data_bucket: str = "ser-data",
        english_corpora: str = DEFAULT_ENGLISH,
        select: str = "study",
        augment_corpora: str = "tess",
        augment_mode: str = "replace",
        feature_kind: str = "mel",
        feature_size: str = "60",
        config: dict = {"preset": "optimal-english"},
        epochs: int = 600,
        eval_every: int = 10,
        seed: int = 0,
        device: str = "auto",
        model_bucket: str = "ser-models",
        model_name: str = "ser-english",
        s3_endpoint: str = "http://seaweedfs.kubeflow:8333",
        mlflow_uri: str = "http://mlflow.kubeflow:5000",
        mlflow_experiment: str = "ser-retrain",
    ):
        fp = fingerprint_op(data_bucket=data_bucket, corpora=english_corpora, s3_endpoint=s3_endpoint)
        fp.set_display_name("fingerprint data").set_caching_options(False)
        cpu_resources(fp, cpu="250m", memory="512M")
        time_limit(fp, minutes=10)
        en = ingest_op(data_bucket=data_bucket, corpora=english_corpora, select=select, seed=seed, s3_endpoint=s3_endpoint,
                       fingerprint=fp.output)
        en.set_display_name("ingest")
        for task in (fp, en):
            with_s3_keys(task)
            retry_io(task)
        aug = augment_op(table=en.outputs["table"], corpora=augment_corpora, mode=augment_mode, seed=seed)
        feats = features_op(table=aug.outputs["augmented"], corpus=en.outputs["table"], kinds=feature_kind, sizes=feature_size, labels="english")
        for task in (en, aug, feats):
            cpu_resources(task, cpu="2", memory="8G")
            time_limit(task, minutes=120)
        final = final_op(features=feats.outputs["features"], config=config, feature=feature_kind, size=feature_size, epochs=epochs,
                         eval_every=eval_every, seed=seed, device=device, mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment)
        final.set_display_name("final training")
        on_v100(final)
        retry_io(final)
        time_limit(final, minutes=720)
        ev = evaluate_op(model=final.outputs["model"], features=feats.outputs["features"], rows="test", mlflow_uri=mlflow_uri,
                         mlflow_experiment=mlflow_experiment)
        ev.set_display_name("evaluate")
        retry_io(ev)  # its MLflow run
        cpu_resources(ev, cpu="2", memory="4G")
        time_limit(ev, minutes=60)
        cmp = compare_op(model=final.outputs["model"], features=feats.outputs["features"], report=ev.outputs["report"],
                         model_bucket=model_bucket, name=model_name, s3_endpoint=s3_endpoint, mlflow_uri=mlflow_uri,
                         mlflow_experiment=mlflow_experiment, parent_run="")
        cmp.set_display_name("compare with champion").set_caching_options(False)
        with_s3_keys(cmp)
        retry_io(cmp)
        cpu_resources(cmp, cpu="1", memory="4G")
        time_limit(cmp, minutes=30)
        with dsl.If(cmp.outputs["Output"] == True, name="beats-champion"):  # noqa: E712 (a KFP condition, not a Python test)
            pub = publish_op(model=final.outputs["model"], report=ev.outputs["report"], verdict=cmp.outputs["verdict"],
                             model_bucket=model_bucket, name=model_name, s3_endpoint=s3_endpoint, mlflow_uri=mlflow_uri)
            pub.set_display_name("publish").set_caching_options(False)
            with_s3_keys(pub)
            retry_io(pub)
            cpu_resources(pub, cpu="1", memory="4G")
            time_limit(pub, minutes=30)

    return ser_retrain


ser_retrain = build_retrain()
