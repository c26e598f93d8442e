"""Champion gate and publication: register the candidate in MLflow and run the promotion
gate (the registry's ``champion`` alias is the record), then archive (.mar, KServe layout)
to the S3 model bucket, whose serving copy follows the registry."""

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
        mlflow_uri: str,
        mlflow_experiment: str,
        parent_run: str,
        verdict: Output[Artifact],
        summary: Output[Markdown],
    ) -> bool:
        """Registers the candidate as a version of ``name`` in MLflow and runs the promotion
        gate: the registry's champion scored on the candidate's test rows, ``champion``
        moved to the candidate only if its macro F1 is higher (a compare-and-set).
        Returns whether it was promoted. ``verdict`` (JSON) holds both scores and the
        reason. Without MLflow nothing is promoted (the reason says so)."""
        from ser import files
        from ser.kubeflow import tasks as steps

        steps.configure(s3_endpoint=s3_endpoint, mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        metrics = files.read_json(report.path + "/metrics.json")
        data = steps.compare_with_champion(model.path, features.path, metrics, model_bucket, name, parent_run=parent_run)
        files.write_json(verdict.path, data)
        verdict.metadata.update({k: v for k, v in data.items() if isinstance(v, (str, int, float, bool))})
        files.write_text(summary.path, f"### Candidate vs champion\n\n{data['reason']}\n\npromoted: **{data['promote']}**\n")
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
        published: Output[Artifact],
        summary: Output[Markdown],
    ) -> str:
        """Uploads to s3://model_bucket/name/versions/<version>/ and, when compare_champion
        promoted it, makes name/champion/ (the InferenceService's storageUri) hold the
        registry's champion. Returns the version URI."""
        from ser import files
        from ser.kubeflow import tasks as steps

        steps.configure(s3_endpoint=s3_endpoint, mlflow_uri=mlflow_uri)
        decision = files.read_json(verdict.path)
        info = steps.publish(model.path, report.path, model_bucket, name, published.path, promote=bool(decision["promote"]),
                             registry_version=str(decision.get("registry_version") or ""))
        published.metadata.update({k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))})
        lines = [f"- {k}: `{v}`" for k, v in info.items()]
        files.write_text(summary.path, f"### Published {name} {info['version']}\n\n{decision['reason']}\n\n" + "\n".join(lines) + "\n")
        return info["uri"]

    return publish
