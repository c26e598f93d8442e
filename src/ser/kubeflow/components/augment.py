"""Augment: perturbed copies of TESS (the study: pitch/stretch/noise pairs, mode replace)."""

from kfp.dsl import Dataset, Input, Markdown, Output

from ser.kubeflow.components._common import CPU_IMAGE, component


def op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def augment(
        table: Input[Dataset],
        corpora: str,
        mode: str,
        seed: int,
        augmented: Output[Dataset],
        summary: Output[Markdown],
    ) -> int:
        """Copies of the rows of ``corpora`` (comma-separated); returns how many were made."""
        from ser import files
        from ser.kubeflow import tasks as steps

        info = steps.augment(table.path, augmented.path, corpora=corpora, mode=mode, seed=seed)
        files.write_text(summary.path, info.pop("markdown"))
        augmented.metadata.update({"originals": info["originals"], "copies": info["copies"], "mode": mode})
        return info["copies"]

    return augment
