"""The Kubeflow Pipelines shell: what each KFP task runs (:mod:`ser.kubeflow.tasks`,
thin adapters over :mod:`ser.steps` and the search), the components that wrap those
tasks (``components/``), the pipelines that wire them (``pipelines/``), and the runner
that compiles, runs locally and submits them (:mod:`ser.kubeflow.runner`).

It ships inside the ``ser`` package, so an installed wheel (or an image) compiles and
runs the pipelines without a source checkout. Nothing outside this folder and the CLI
imports it.
"""
