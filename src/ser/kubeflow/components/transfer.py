"""Transfer: fine-tune the English winner on Greek (new head, a frozen subset, LR x batch grid)."""

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from ser.kubeflow.components._common import GPU_IMAGE, component


def op(base_image: str = GPU_IMAGE):
    @component(base_image)
    def transfer(
        model: Input[Model],
        features: Input[Dataset],
        freeze: str,
        lrs: str,
        batches: str,
        epochs: int,
        eval_every: int,
        seed: int,
        device: str,
        mlflow_uri: str,
        mlflow_experiment: str,
        tuned: Output[Model],
        metrics: Output[Metrics],
        confusion: Output[ClassificationMetrics],
        curves: Output[HTML],
        cv_folds: int = 0,
        final_epochs: int = 0,
    ) -> float:
        """freeze: subsets a..g ("g", "aceg", "all"); lrs / batches comma-separated; cv_folds > 0: cells
        scored by k-fold CV on the training side, then one final model of final_epochs. Returns test macro F1."""
        from ser.ops import gpu
        from ser.kubeflow import tasks as steps

        gpu.check_gpu_arch()
        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        data = steps.transfer(model.path, features.path, tuned.path, freeze=freeze, lrs=lrs, batches=batches, epochs=epochs,
                              eval_every=eval_every, seed=seed, device=device, cv_folds=cv_folds, final_epochs=final_epochs)
        return steps.record_training(data, tuned, metrics, confusion, curves, "transfer")

    return transfer
