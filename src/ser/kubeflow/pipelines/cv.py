"""``ser_cv``: speaker-independent cross-validation of a recipe on corpora in S3.

fingerprint -> ingest (S3) -> cross-validate (a GPU step: the recipe's features, one
model per speaker fold, UA/WA/macro F1 mean +- std as KFP metrics, the summed confusion
matrix, a fold table page, the fold models as one servable ensemble). The recipe is a
parameter (plus, study, whisper; whisper needs an image built with the encoder extra),
so a team chooses a recipe by the score a new voice would get, on a cluster.
"""

from kfp import dsl

from ser.kubeflow.components import cross_validate, ingest
from ser.kubeflow.components._common import CPU_IMAGE, GPU_IMAGE, cpu_resources, on_v100, retry_io, time_limit, with_s3_keys


def build_cv(cpu_image: str = CPU_IMAGE, gpu_image: str = GPU_IMAGE, **_ignored):
    """The ``ser_cv`` pipeline on these images."""
    fingerprint_op, ingest_op = ingest.fingerprint_op(cpu_image), ingest.op(cpu_image)
    cv_op = cross_validate.op(gpu_image)

    @dsl.pipeline(
        name="ser-cv",
        description="Cross-validate a recipe over speaker folds of the corpora in S3: UA, WA and macro F1 (mean +- std) on "
        "voices each model never heard, and the fold models as one servable ensemble.",
    )
    def ser_cv(
        data_bucket: str = "ser-data",
        corpora: str = "emodb=corpora/emodb",
        select: str = "all",
        recipe: str = "plus",
        labels: str = "emodb",
        folds: int = 0,
        seeds: int = 1,
        epochs: int = 0,
        overrides: str = "",
        device: str = "auto",
        s3_endpoint: str = "http://seaweedfs.kubeflow:8333",
        mlflow_uri: str = "http://mlflow.kubeflow:5000",
        mlflow_experiment: str = "ser-cv",
    ):
        fp = fingerprint_op(data_bucket=data_bucket, corpora=corpora, s3_endpoint=s3_endpoint)
        fp.set_display_name("fingerprint data").set_caching_options(False)
        cpu_resources(fp, cpu="250m", memory="512M")
        time_limit(fp, minutes=10)
        en = ingest_op(data_bucket=data_bucket, corpora=corpora, select=select, seed=0, s3_endpoint=s3_endpoint, fingerprint=fp.output)
        en.set_display_name("ingest")
        cpu_resources(en, cpu="2", memory="8G")
        time_limit(en, minutes=120)
        for task in (fp, en):
            with_s3_keys(task)
            retry_io(task)
        cv = cv_op(table=en.outputs["table"], recipe=recipe, labels=labels, folds=folds, seeds=seeds, epochs=epochs, overrides=overrides,
                   device=device, mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment)
        cv.set_display_name("cross-validate")
        on_v100(cv)
        retry_io(cv)  # its MLflow run; finished folds are read back from its output on a retry
        time_limit(cv, minutes=1440)

    return ser_cv


ser_cv = build_cv()
