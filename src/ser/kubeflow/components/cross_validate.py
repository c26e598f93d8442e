"""Cross-validate: a recipe (plus, study, whisper) over speaker folds of an ingested table."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from ser.kubeflow.components._common import GPU_IMAGE, component


def op(base_image: str = GPU_IMAGE):
    @component(base_image)
    def cross_validate(
        table: Input[Dataset],
        recipe: str,
        labels: str,
        folds: int,
        seeds: int,
        epochs: int,
        overrides: str,
        device: str,
        mlflow_uri: str,
        mlflow_experiment: str,
        results: Output[Artifact],
        ensemble: Output[Model],
        metrics: Output[Metrics],
        confusion: Output[ClassificationMetrics],
        page: Output[HTML],
    ) -> float:
        """Every speaker tested once by models that never heard them (``folds`` 0: leave one
        speaker out, else K speaker groups; checkpoints on validation speakers, except the
        study recipe's rule, labelled optimistic). ``overrides``: ``section.field=value``
        pairs separated by ``;``. ``ensemble``: the fold models as one servable model.
        Returns the mean unweighted accuracy (UA)."""
        from ser import files
        from ser.kubeflow import tasks as steps
        from ser.ops import gpu

        gpu.check_gpu_arch()
        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        data = steps.cross_validate(table.path, results.path, ensemble.path, recipe=recipe, labels=labels, folds=folds, seeds=seeds,
                                    epochs=epochs, overrides=overrides, device=device)
        # seed_ensemble (seeds > 1): each fold's seeds as one model
        for prefix, summary in (("", data["summary"]), ("seed_ensemble_", data.get("seed_ensemble") or {})):
            for name, stats in summary.items():
                for stat in ("mean", "std"):
                    if stats[stat] == stats[stat]:  # NaN (no run scored) is left out: the UI cannot plot it
                        metrics.log_metric(f"{prefix}{name}_{stat}", stats[stat])
        confusion.log_confusion_matrix(data["labels"], data["confusion_matrix"])
        ensemble.metadata.update({"recipe": data["recipe"], "protocol": data["protocol"], "ua_mean": data["summary"]["ua"]["mean"],
                                  "optimistic": data["optimistic"], "framework": "pytorch"})
        files.write_text(page.path, data["page"])
        steps.write_metadata_files(metrics, confusion)  # a file at each path: cacheable by kfp.local too
        return float(data["summary"]["ua"]["mean"])

    return cross_validate
