"""Ingest: download corpus prefixes from the S3 data bucket, scan them into an utterance table."""

from kfp.dsl import Dataset, Markdown, Output

from ser.kubeflow.components._common import CPU_IMAGE, component


def op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def ingest(
        data_bucket: str,
        corpora: str,
        select: str,
        seed: int,
        s3_endpoint: str,
        table: Output[Dataset],
        summary: Output[Markdown],
        fingerprint: str = "",
    ) -> int:
        """corpora: NAME=PREFIX pairs ("ravdess=corpora/ravdess,tess=corpora/tess"); returns the row count.
        ``fingerprint`` (the fingerprint step's output) makes the cache key follow the data."""
        import os

        from ser import files
        from ser.kubeflow import tasks as steps

        if s3_endpoint:
            os.environ["S3_ENDPOINT_URL"] = s3_endpoint
        info = steps.ingest(data_bucket, corpora, table.path, select=select, seed=seed, fingerprint=fingerprint)
        files.write_text(summary.path, info.pop("markdown"))
        table.metadata.update({"rows": info["rows"], "problems": info["problems"], "corpora": ",".join(info["labels"]),
                               "fingerprint": info["fingerprint"]})
        return info["rows"]

    return ingest


def fingerprint_op(base_image: str = CPU_IMAGE):
    @component(base_image)
    def data_fingerprint(data_bucket: str, corpora: str, s3_endpoint: str) -> str:
        """Digest of the corpus objects (key, size, ETag): run uncached, so that the cached
        ingest step reruns exactly when the data changed."""
        import os

        from ser.kubeflow import tasks as steps

        if s3_endpoint:
            os.environ["S3_ENDPOINT_URL"] = s3_endpoint
        return steps.data_fingerprint(data_bucket, corpora)

    return data_fingerprint
