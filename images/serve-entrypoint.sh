#!/bin/sh
# ser-serve: entrypoint of the serving image (images/Dockerfile.serve).
#
#   ser-serve [serve] [extra torchserve args]   start TorchServe in the foreground
#   ser-serve OTHER COMMAND...                  run that command instead
#
# Serves what KServe's storage initializer downloaded from the InferenceService's
# storageUri into $SER_MODEL_DIR (default /mnt/models):
#   config/config.properties   the archive's TorchServe settings (optional)
#   model-store/*.mar          the model archive(s), all loaded at start
# The config is copied with the listen addresses rewritten for a pod: the archive's
# config binds to 127.0.0.1 (right for a laptop), a pod must bind 0.0.0.0. Inference
# (TorchServe API, KServe v1 /v1/models/NAME:predict too) on $SER_HTTP_PORT (8080,
# the port KServe routes to), Prometheus metrics on $SER_METRICS_PORT (8082), the
# management API on loopback only. Token auth is off: the cluster network (KServe,
# NetworkPolicy, mesh) is the boundary, as with KServe's own TorchServe runtime.
set -eu

if [ "$#" -gt 0 ] && [ "$1" != "serve" ]; then
    exec "$@"
fi
if [ "$#" -gt 0 ]; then shift; fi

MODEL_DIR="${SER_MODEL_DIR:-/mnt/models}"
MODEL_STORE="${SER_MODEL_STORE:-$MODEL_DIR/model-store}"
BASE_CONFIG="${SER_TS_CONFIG:-$MODEL_DIR/config/config.properties}"
HTTP_PORT="${SER_HTTP_PORT:-8080}"
METRICS_PORT="${SER_METRICS_PORT:-8082}"
MANAGEMENT_PORT="${SER_MANAGEMENT_PORT:-8081}"
RUN_DIR="${SER_RUN_DIR:-${TMPDIR:-/tmp}/ser-serve}"

# Same guard as the other images: SER_REQUIRED_CUDA_ARCH=sm_70 in the V100 variant.
python -m ser.ops.gpu --quiet

if ! ls "$MODEL_STORE"/*.mar > /dev/null 2>&1; then
    echo "ser-serve: no model archive (*.mar) in $MODEL_STORE: the storageUri must hold model-store/NAME.mar (and config/config.properties)" >&2
    exit 1
fi

mkdir -p "$RUN_DIR"
CONFIG="$RUN_DIR/config.properties"
{
    if [ -f "$BASE_CONFIG" ]; then
        grep -v -E '^[[:space:]]*(inference_address|management_address|metrics_address|model_store|load_models)[[:space:]]*=' "$BASE_CONFIG" || true
    fi
    echo "# set by ser-serve"
    echo "inference_address=http://0.0.0.0:$HTTP_PORT"
    echo "management_address=http://127.0.0.1:$MANAGEMENT_PORT"
    echo "metrics_address=http://0.0.0.0:$METRICS_PORT"
    echo "model_store=$MODEL_STORE"
    echo "load_models=all"
} > "$CONFIG"

echo "ser-serve: serving $(ls "$MODEL_STORE"/*.mar | tr '\n' ' ')on :$HTTP_PORT (metrics :$METRICS_PORT)" >&2
exec torchserve --start --foreground --disable-token-auth --no-config-snapshots \
    --model-store "$MODEL_STORE" --ts-config "$CONFIG" "$@"
