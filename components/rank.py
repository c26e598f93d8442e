"""Rank a stage: the collected fold results -> the ranking table (the study's Table 2)."""

from typing import List

from kfp.dsl import Artifact, Input, Markdown, Metrics, Output

from components._common import CPU_IMAGE, component


def op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def rank_stage(
        stage: int,
        recipe: Input[Artifact],
        results: Input[List[Artifact]],
        ranking: Output[Artifact],
        table: Output[Markdown],
        metrics: Output[Metrics],
        previous: Input[Artifact] = None,
    ) -> float:
        """``results``: dsl.Collected train_folds outputs; ``previous``: the last ranking
        (merged for stages that merge). Returns the best macro F1."""
        from ser import pipeline_steps as steps

        info = steps.rank_stage(recipe.path, stage, [r.path for r in results], ranking.path,
                                previous.path if previous is not None else None)
        steps.write_text(table.path, info["markdown"])
        for key in ("vectors", "ranked", "listed", "best_macro_f1", "best_accuracy"):
            metrics.log_metric(key, float(info[key]))
        ranking.metadata.update({"stage": stage, "best": info["best_id"], "winner": info["winner"]})
        return info["best_macro_f1"]

    return rank_stage
