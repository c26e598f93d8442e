#!/bin/sh
# Entrypoint of the ser CPU and V100 images: check that this torch build has kernels
# for the required/visible GPUs (ser.ops.gpu; the V100 image sets SER_REQUIRED_CUDA_ARCH=sm_70),
# then run the command. KFP components replace the entrypoint with their own command,
# so GPU components call ser.ops.gpu.check_gpu_arch() themselves.
set -eu
python -m ser.ops.gpu --quiet
exec "$@"
