"""Kubeflow Pipelines v2 components of ser: one small file per pipeline step.

Each module exposes ``op(base_image=...)``, a factory that returns the lightweight
component (``@dsl.component``) built on that image: CPU steps default to
:data:`ser.ops.images.CPU_IMAGE`, GPU steps to :data:`ser.ops.images.GPU_IMAGE`.  The
component bodies only import ``ser`` (the image has it installed; kfp is not
pip-installed at run time) and call one function of :mod:`ser.kubeflow.tasks`
or one ``ser`` command, then hand the numbers to KFP's typed artifacts (Dataset,
Model, Metrics, ClassificationMetrics, HTML, Markdown).

Pipeline-level settings that belong to the task, not the body (GPU node pool, the
S3 secret as environment) are in :mod:`ser.kubeflow.components._common`; the
pipelines in :mod:`ser.kubeflow.pipelines` apply them.
"""
