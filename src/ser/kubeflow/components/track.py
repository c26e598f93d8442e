"""Tracking: the MLflow run a pipeline run's steps nest under (optional)."""

from kfp.dsl import Artifact, Input, Model

from ser.kubeflow.components._common import CPU_IMAGE, component


def op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def mlflow_run(name: str, mlflow_uri: str, mlflow_experiment: str) -> str:
        """Opens (and closes) a parent run in ``mlflow_experiment``; returns its id, or ""
        when MLflow is not configured or does not answer (the pipeline runs on untracked)."""
        from ser.kubeflow import tasks as steps

        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        run_id = steps.open_pipeline_run(name, {"experiment": mlflow_experiment})
        print(f"MLflow parent run: {run_id or '(tracking off)'}")
        return run_id

    return mlflow_run


def link_op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def link_runs(parent_run: str, mlflow_uri: str, mlflow_experiment: str, ranking: Input[Artifact] = None,
                  model: Input[Model] = None, tuned: Input[Model] = None, evaluated: Input[Artifact] = None,
                  evaluated_tuned: Input[Artifact] = None) -> int:
        """Nests the MLflow runs that the (cacheable) search, final, transfer and
        evaluate steps recorded in their outputs under this pipeline run's parent run;
        uncached, so that tracking ids never enter a cache key. Returns how many were linked."""
        from ser.kubeflow import tasks as steps

        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        return steps.link_runs(parent_run, [a.path if a is not None else None for a in (ranking, model, tuned, evaluated, evaluated_tuned)])

    return link_runs
