"""Kubeflow pipelines of ser: ``ser_study`` (the whole study), ``ser_retrain`` and
``ser_cv`` (speaker-independent cross-validation of a recipe).

Each is built by a factory that takes the base images (and, for the study, the
fan-out limit): ``build_study``, ``build_retrain``, ``build_cv``; the module-level
pipelines use the defaults of :mod:`ser.ops.images`. ``ser pipeline compile`` writes
their YAML; ``ser pipeline run-local`` runs them through kfp's
SubprocessRunner, unchanged.
"""

from ser.kubeflow.pipelines.cv import build_cv, ser_cv
from ser.kubeflow.pipelines.retrain import build_retrain, ser_retrain
from ser.kubeflow.pipelines.study import build_study, ser_study

PIPELINES = {"ser_study": ser_study, "ser_retrain": ser_retrain, "ser_cv": ser_cv}
BUILDERS = {"ser_study": build_study, "ser_retrain": build_retrain, "ser_cv": build_cv}

__all__ = ["PIPELINES", "BUILDERS", "build_study", "build_retrain", "build_cv", "ser_study", "ser_retrain", "ser_cv"]
