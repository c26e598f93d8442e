"""Features: spectral images (kind x size) of every row of a table, one .npz per pair."""

from kfp.dsl import Dataset, Input, Markdown, Output

from ser.kubeflow.components._common import CPU_IMAGE, component


def op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def features(
        table: Input[Dataset],
        corpus: Input[Dataset],
        kinds: str,
        sizes: str,
        labels: str,
        features: Output[Dataset],
        summary: Output[Markdown],
    ) -> int:
        """kinds "mel,chroma", sizes "30,60", labels english|greek; ``corpus`` is the
        ingest output the table's original rows live in. Returns the image count."""
        from ser import files
        from ser.kubeflow import tasks as steps

        info = steps.features(table.path, features.path, kinds=kinds, sizes=sizes, labels=labels, roots=[corpus.path])
        files.write_text(summary.path, info.pop("markdown"))
        features.metadata.update({"labels": labels, "sets": ",".join(info["sets"])})
        return max(s["n"] for s in info["sets"].values())

    return features
