"""What the pipelines apply to tasks: the base-image decorator, S3 keys from the KFP
secret, and the V100 node-pool scheduling of GPU steps (kfp-kubernetes).

Only the pipeline definitions import this module (at compile time); component
bodies never do, since ``components/`` is not in the image.
"""

from __future__ import annotations

import functools
from typing import Callable

from kfp import dsl, kubernetes

from ser import gpu, images

CPU_IMAGE = images.CPU_IMAGE
GPU_IMAGE = images.GPU_IMAGE

#: The KFP artifact-store secret (keys accesskey/secretkey): SeaweedFS since KFP 2.15,
#: the name kept from MinIO. Mapped to the variables ser.store reads.
S3_SECRET = "mlpipeline-minio-artifact"
S3_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}


def component(base_image: str) -> Callable:
    """``@dsl.component`` on ``base_image`` without the runtime ``pip install kfp``:
    the ser images carry kfp (a dependency of ser), and locally the venv has it."""
    return functools.partial(dsl.component, base_image=base_image, install_kfp_package=False)


def with_s3_keys(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """S3 keys from the secret ``mlpipeline-minio-artifact`` as env (cluster only:
    the local runner ignores kubernetes settings and inherits the parent env)."""
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=dict(S3_SECRET_KEYS))
    return task


def on_v100(task: dsl.PipelineTask, gpus: int = 1) -> dsl.PipelineTask:
    """Schedule a GPU step on the V100 node pool: accelerator type and limit, the node
    selector and the toleration of ``ser.gpu`` (the same the gpu-v100 manifests use)."""
    task.set_accelerator_type(gpu.GPU_RESOURCE)
    task.set_accelerator_limit(gpus)
    for key, value in gpu.V100_NODE_SELECTOR.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in gpu.GPU_TOLERATIONS:
        kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"), value=tol.get("value"), effect=tol.get("effect"))
    return task


def cpu_resources(task: dsl.PipelineTask, cpu: str = "1", memory: str = "4G") -> dsl.PipelineTask:
    """Requests for CPU steps (the scheduler needs them; limits are left to the namespace)."""
    task.set_cpu_request(cpu)
    task.set_memory_request(memory)
    return task
