"""Train folds: one parameter vector's k-fold cross-validation with the stage's early stopping."""

from typing import Dict

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from ser.kubeflow.components._common import GPU_IMAGE, component


def op(base_image: str = GPU_IMAGE):
    @component(base_image)
    def train_folds(
        item: Dict,
        recipe: Input[Artifact],
        features: Input[Dataset],
        device: str,
        mlflow_uri: str,
        mlflow_experiment: str,
        result: Output[Artifact],
        metrics: Output[Metrics],
        curves: Output[HTML],
    ) -> float:
        """``item``: {"stage", "id", "vector"} planned by the recipe or rank step. Returns the
        mean macro F1 over folds. Its MLflow run (if tracked) is recorded in ``result``
        and nested under the pipeline's run by the uncached link step, so no run id
        enters this step's cache key."""
        from ser.ops import gpu
        from ser import files
        from ser.kubeflow import tasks as steps

        gpu.check_gpu_arch()
        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        info = steps.train_folds(features.path, recipe.path, item, result.path, device=device)
        for key in ("macro_f1", "macro_f1_std", "accuracy", "accuracy_std", "val_loss", "epochs", "seconds"):
            if isinstance(info.get(key), (int, float)) and info[key] == info[key]:
                metrics.log_metric(key, float(info[key]))
        metrics.log_metric("qualified", float(bool(info["qualified"])))
        steps.write_metadata_files(metrics)  # a file at its path: cacheable by kfp.local too
        result.metadata.update({"id": info["id"], "stage": info["stage"], "stopped_by": info["stopped_by"]})
        files.write_text(curves.path, steps.html_page(f"stage {info['stage']} vector {info['id']}", info["curves"],
                                                      "<pre>" + info["markdown"] + "</pre>"))
        f1 = info["macro_f1"]
        return float(f1) if f1 is not None and f1 == f1 else 0.0

    return train_folds
