"""Search set-up: the recipe with the pipeline's budgets, and stage 1's parameter vectors."""

from typing import Dict, List

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from ser.kubeflow.components._common import CPU_IMAGE, component


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
        features: Input[Dataset],
        resolved: Output[Artifact],
        summary: Output[Markdown],
    ) -> List[Dict]:
        """recipe: a shipped name (study, demo) or YAML text; trials/epochs/folds 0 and seed -1
        keep the recipe's values. Returns stage 1's parameter vectors (the first
        ParallelFor). No MLflow run id comes in: it would change the cache key of this
        and every later step on each pipeline run (the link step nests the runs)."""
        from ser import files
        from ser.kubeflow import tasks as steps

        info = steps.resolve_recipe(recipe, resolved.path, seed=seed, folds=folds, trials=(trials_stage1, trials_stage2, trials_stage3),
                                    search_epochs=search_epochs, final_stage_epochs=stage4_epochs)
        vectors = steps.plan_stage(resolved.path, info["stages"][0], features.path)
        files.write_text(summary.path, info.pop("markdown") + f"\n\nStage {info['stages'][0]}: {len(vectors)} vectors.\n")
        resolved.metadata.update({"recipe": info["name"], "hash": info["hash"], "stage1_vectors": len(vectors)})
        return vectors

    return search_recipe
