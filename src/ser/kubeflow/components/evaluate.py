"""Evaluate: a model on its held-out test split -> accuracy, macro F1, confusion matrix."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from ser.kubeflow.components._common import CPU_IMAGE, component


def op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def evaluate(
        model: Input[Model],
        features: Input[Dataset],
        rows: str,
        report: Output[Artifact],
        metrics: Output[Metrics],
        confusion: Output[ClassificationMetrics],
        page: Output[HTML],
        mlflow_uri: str = "",
        mlflow_experiment: str = "",
    ) -> float:
        """``rows``: test (the rows the model was tested on: its search's held-out
        sources, else the split in its metadata), train or all. Its MLflow run goes to
        ``mlflow_experiment`` (the pipeline's) and is nested by the link step. Returns
        macro F1."""
        from ser import files
        from ser.study.report import scalars
        from ser.kubeflow import tasks as steps

        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        data = steps.evaluate(model.path, features.path, report.path, rows=rows)
        for key, value in scalars(data).items():
            metrics.log_metric(key, value)
        confusion.log_confusion_matrix(list(data["labels"]), data["confusion_matrix"])
        files.write_text(page.path, steps.training_report(report.path, f"evaluation ({rows} rows)", data))
        steps.write_metadata_files(metrics, confusion)  # a file at each path: cacheable by kfp.local too
        return float(data["macro_f1"])

    return evaluate
