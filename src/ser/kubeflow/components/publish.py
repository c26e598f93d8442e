"""Publish: compare with the registered champion, then archive (.mar, KServe layout) to the
S3 model bucket and register (MLflow, optional)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from ser.kubeflow.components._common import CPU_IMAGE, component


def compare_op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def compare_champion(
        model: Input[Model],
        features: Input[Dataset],
        report: Input[Artifact],
        model_bucket: str,
        name: str,
        s3_endpoint: str,
        verdict: Output[Artifact],
        summary: Output[Markdown],
    ) -> bool:
        """The champion in s3://model_bucket/name/ scored on the candidate's test rows.
        Returns whether to promote: the candidate's macro F1 is higher, or there is no
        champion. ``verdict`` (JSON) holds both scores and the reason."""
        from ser import files
        from ser.kubeflow import tasks as steps

        steps.configure(s3_endpoint=s3_endpoint)
        metrics = files.read_json(report.path + "/metrics.json")
        data = steps.compare_with_champion(model.path, features.path, metrics, model_bucket, name)
        files.write_json(verdict.path, data)
        verdict.metadata.update({k: v for k, v in data.items() if isinstance(v, (str, int, float, bool))})
        files.write_text(summary.path, f"### Candidate vs champion\n\n{data['reason']}\n\npromote: **{data['promote']}**\n")
        print(data["reason"])
        return bool(data["promote"])

    return compare_champion


def op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def publish(
        model: Input[Model],
        report: Input[Artifact],
        verdict: Input[Artifact],
        model_bucket: str,
        name: str,
        s3_endpoint: str,
        mlflow_uri: str,
        mlflow_experiment: str,
        parent_run: str,
        published: Output[Artifact],
        summary: Output[Markdown],
    ) -> str:
        """Uploads to s3://model_bucket/name/versions/<version>/ and, when the verdict of
        compare_champion says promote, to name/champion/ (the InferenceService's
        storageUri). Returns the version URI."""
        from ser import files
        from ser.kubeflow import tasks as steps

        steps.configure(s3_endpoint=s3_endpoint, mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        decision = files.read_json(verdict.path)
        info = steps.publish(model.path, report.path, model_bucket, name, published.path, promote=bool(decision["promote"]),
                             champion_value=decision["champion"] if decision["champion"] >= 0 else None, parent_run=parent_run)
        published.metadata.update({k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))})
        lines = [f"- {k}: `{v}`" for k, v in info.items()]
        files.write_text(summary.path, f"### Published {name} {info['version']}\n\n{decision['reason']}\n\n" + "\n".join(lines) + "\n")
        return info["uri"]

    return publish
