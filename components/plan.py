"""Search set-up: the recipe with the pipeline's budgets, and each stage's parameter vectors."""

from typing import Dict, List, NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components._common import CPU_IMAGE, component


def recipe_op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def search_recipe(
        recipe: str,
        seed: int,
        folds: int,
        trials_stage1: int,
        trials_stage2: int,
        trials_stage3: int,
        search_epochs: int,
        stage4_epochs: int,
        mlflow_uri: str,
        mlflow_experiment: str,
        resolved: Output[Artifact],
        summary: Output[Markdown],
    ) -> NamedTuple("Outputs", [("run_id", str), ("name", str)]):
        """recipe: a shipped name (study, demo) or YAML text; 0 (seed: -1) keeps the recipe's value.
        Opens the MLflow run the later steps nest under (run_id "" when tracking is off)."""
        from collections import namedtuple

        from ser import pipeline_steps as steps

        steps.configure(mlflow_uri=mlflow_uri, experiment=mlflow_experiment)
        info = steps.resolve_recipe(recipe, resolved.path, seed=seed, folds=folds, trials=(trials_stage1, trials_stage2, trials_stage3),
                                    search_epochs=search_epochs, final_stage_epochs=stage4_epochs)
        steps.write_text(summary.path, info.pop("markdown"))
        resolved.metadata.update({"recipe": info["name"], "hash": info["hash"]})
        run_id = steps.open_pipeline_run(f"ser study ({info['name']})", {"recipe": info["name"], "recipe_hash": info["hash"]})
        return namedtuple("Outputs", ["run_id", "name"])(run_id, info["name"])

    return search_recipe


def plan_op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def plan_stage(
        stage: int,
        recipe: Input[Artifact],
        features: Input[Dataset],
        ranking: Input[Artifact] = None,
    ) -> List[Dict]:
        """The vectors stage ``stage`` scores: the items of the stage's ParallelFor."""
        from ser import pipeline_steps as steps

        items = steps.plan_stage(recipe.path, stage, features.path, ranking.path if ranking is not None else None)
        print(f"stage {stage}: {len(items)} vectors: " + ", ".join(i["id"] for i in items))
        return items

    return plan_stage
