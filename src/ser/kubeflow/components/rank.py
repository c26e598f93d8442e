"""Rank a stage: the collected fold results -> the ranking table (the study's Table 2),
and the parameter vectors of the next stage."""

from typing import Dict, List

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from ser.kubeflow.components._common import CPU_IMAGE, component


def op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def rank_stage(
        stage: int,
        next_stage: int,
        recipe: Input[Artifact],
        features: Input[Dataset],
        results: Input[List[Artifact]],
        ranking: Output[Artifact],
        table: Output[Markdown],
        metrics: Output[Metrics],
        previous: Input[Artifact] = None,
    ) -> List[Dict]:
        """``results``: the stage's dsl.Collected train_folds outputs; ``previous``: the
        last ranking (merged for stages that merge). Returns the vectors of
        ``next_stage`` planned from this ranking (none when ``next_stage`` is 0)."""
        from ser import files
        from ser.kubeflow import tasks as steps

        info = steps.rank_stage(recipe.path, stage, [r.path for r in results], ranking.path,
                                previous.path if previous is not None else None)
        files.write_text(table.path, info["markdown"])
        for key in ("vectors", "ranked", "listed", "best_macro_f1", "best_accuracy"):
            metrics.log_metric(key, float(info[key]))
        steps.write_metadata_files(metrics)  # a file at its path: cacheable by kfp.local too
        ranking.metadata.update({"stage": stage, "best": info["best_id"], "winner": info["winner"]})
        vectors = steps.plan_stage(recipe.path, next_stage, features.path, ranking.path) if next_stage else []
        print(f"stage {stage}: best {info['best_id']} macro F1 {info['best_macro_f1']:.4f}; stage {next_stage}: {len(vectors)} vectors")
        return vectors

    return rank_stage
