"""What the pipelines apply to tasks: the base-image decorator, S3 keys from the KFP
secret, and the V100 node-pool scheduling of GPU steps (kfp-kubernetes).

Only the pipeline definitions import this module (at compile time); component
bodies never do: KFP serialises a body alone into the pipeline YAML.
"""

from __future__ import annotations

import functools
from typing import Callable

from kfp import dsl, kubernetes

from ser.ops import gpu, images

CPU_IMAGE = images.CPU_IMAGE
GPU_IMAGE = images.GPU_IMAGE

#: The KFP artifact-store secret (keys accesskey/secretkey): SeaweedFS since KFP 2.15,
#: the name kept from MinIO. Mapped to the variables ser.adapters.store reads.
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


def on_v100(task: dsl.PipelineTask, gpus: int = 1, cpu: str = "4", memory: str = "16G") -> dsl.PipelineTask:
    """Schedule a GPU step on the V100 node pool: accelerator type and limit, the node
    selector and the toleration of ``ser.ops.gpu`` (the same the gpu-v100 manifests use),
    and CPU/memory requests = limits (data loading and the host copy of the model)."""
    cpu_resources(task, cpu=cpu, memory=memory)
    task.set_accelerator_type(gpu.GPU_RESOURCE)
    task.set_accelerator_limit(gpus)
    for key, value in gpu.V100_NODE_SELECTOR.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in gpu.GPU_TOLERATIONS:
        kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"), value=tol.get("value"), effect=tol.get("effect"))
    return task


def cpu_resources(task: dsl.PipelineTask, cpu: str = "1", memory: str = "4G") -> dsl.PipelineTask:
    """CPU and memory requests with equal limits: the scheduler places the pod by its
    requests, and the limits keep one runaway step from starving its node's neighbours
    (equal values also give the pod the Guaranteed QoS class: last to be evicted)."""
    task.set_cpu_request(cpu).set_cpu_limit(cpu)
    task.set_memory_request(memory).set_memory_limit(memory)
    return task


#: Retries of steps that talk to S3 or MLflow: a restarting server or a dropped
#: connection should cost a retry, not the pipeline run. 30 s, 60 s, 120 s apart.
IO_RETRIES = 3
IO_BACKOFF = "30s"
IO_BACKOFF_FACTOR = 2.0
IO_BACKOFF_MAX = "600s"


def retry_io(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Retry with exponential backoff (the step must be safe to rerun: ours write
    their outputs fresh, and S3 uploads overwrite the same keys)."""
    return task.set_retry(num_retries=IO_RETRIES, backoff_duration=IO_BACKOFF, backoff_factor=IO_BACKOFF_FACTOR,
                          backoff_max_duration=IO_BACKOFF_MAX)


def time_limit(task: dsl.PipelineTask, minutes: int) -> dsl.PipelineTask:
    """The pod's activeDeadlineSeconds: a step that hangs (a stalled download, a wedged
    GPU) fails after ``minutes`` instead of holding its node forever."""
    kubernetes.set_timeout(task, seconds=int(minutes * 60))
    return task
