"""Kubeflow pipelines of ser: ``ser_study`` (the whole study) and ``ser_retrain``.

Both are built by factories that take the base images and the fan-out limit
(``build_study``, ``build_retrain``); the module-level ``ser_study`` and
``ser_retrain`` use the defaults of :mod:`ser.ops.images`. ``ser pipeline compile``
writes their YAML; ``ser pipeline run-local`` runs them through kfp's
SubprocessRunner, unchanged.
"""

from ser.kubeflow.pipelines.retrain import build_retrain, ser_retrain
from ser.kubeflow.pipelines.study import build_study, ser_study

PIPELINES = {"ser_study": ser_study, "ser_retrain": ser_retrain}
BUILDERS = {"ser_study": build_study, "ser_retrain": build_retrain}

__all__ = ["PIPELINES", "BUILDERS", "build_study", "build_retrain", "ser_study", "ser_retrain"]
