"""Final training: the winner (or a fixed config) on the whole training split, test every K epochs."""

from typing import Dict

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from ser.kubeflow.components._common import GPU_IMAGE, component


def op(base_image: str = GPU_IMAGE):
    @component(base_image)
    def final_train(
        features: Input[Dataset],
        config: Dict,
        feature: str,
        size: str,
        epochs: int,
        eval_every: int,
        seed: int,
        device: str,
        mlflow_uri: str,
        mlflow_experiment: str,
        model: Output[Model],
        metrics: Output[Metrics],
        confusion: Output[ClassificationMetrics],
        curves: Output[HTML],
        ranking: Input[Artifact] = None,
    ) -> float:
        """With ``ranking`` (the final stage's, holding winner.json) the winner is trained;
        without it, ``config`` (ArchSpec/TrainConfig fields or {"preset": ...}) on
        ``feature``/``size``. ``epochs`` 0 keeps the config's; ``seed`` -1 the search's.
        Returns the test macro F1 at the best epoch."""
        from ser.ops import gpu
        from ser import files
        from ser.study.report import scalars
        from ser.kubeflow import tasks as steps

        gpu.check_gpu_arch()
        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        data = steps.final_train(features.path, model.path, ranking_dir=ranking.path if ranking is not None else None, config=config,
                                 feature=feature, size=size, epochs=epochs, eval_every=eval_every, seed=seed, device=device)
        for key, value in scalars(data, ("accuracy", "ua", "macro_f1", "loss", "best_epoch", "epochs_run", "seconds_per_epoch")).items():
            metrics.log_metric(key, value)
        confusion.log_confusion_matrix(list(data["labels"]), data["confusion_matrix"])
        model.metadata.update({"feature": data["feature"], "size": data["size"], "macro_f1": data["macro_f1"], "framework": "pytorch"})
        files.write_text(curves.path, steps.training_report(model.path, "final training", data))
        steps.write_metadata_files(metrics, confusion)  # a file at each path: cacheable by kfp.local too
        return float(data["macro_f1"])

    return final_train
