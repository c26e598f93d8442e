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
        from ser.kubeflow import tasks as steps

        gpu.check_gpu_arch()
        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        data = steps.final_train(features.path, model.path, ranking_dir=ranking.path if ranking is not None else None, config=config,
                                 feature=feature, size=size, epochs=epochs, eval_every=eval_every, seed=seed, device=device)
        return steps.record_training(data, model, metrics, confusion, curves, "final training", ("accuracy", "ua", "macro_f1", "loss", "best_epoch", "epochs_run", "seconds_per_epoch"))

    return final_train
