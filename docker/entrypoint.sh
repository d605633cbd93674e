#!/usr/bin/env bash
# Container entrypoint for the yolov5face (fd1) TorchServe images.
#
# What it does, in order:
#   1. If the first argument is a command (does not start with "-"), run it
#      as-is: `docker run IMAGE yolov5face ready`, `docker run -it IMAGE bash`.
#   2. Check the weights checkpoint exists (it is never baked into the image;
#      mount it at /weights, see weights/README.md).
#   3. When YOLOV5FACE_REQUIRE_GPU=1 (default in the GPU image), check that a
#      GPU is visible inside the container.
#   4. Make sure the model store, engine cache and log folders are writable.
#   5. `exec yolov5face serve ...` so that it becomes the main process and
#      receives SIGTERM/SIGINT directly. It drains: readiness fails at once,
#      requests TorchServe holds are answered (up to 30 s), then only the
#      frontend is signalled and it stops the workers (a signal to the whole
#      process group would kill the workers mid-request). Any extra "--flag"
#      arguments are passed on to it.
#      TorchServe's config is the one packaged with yolov5face unless
#      YOLOV5FACE_CONFIG names another file (then passed as --config).
#
# TensorRT engine: `yolov5face serve` builds (or reuses) the engine in
# $YOLOV5FACE_ENGINE_CACHE before TorchServe starts; workers only load it. If
# the build fails, serve exits 1 (so does this script), unless
# YOLOV5FACE_GPU_FALLBACK=1: then it serves with ONNX Runtime, logged loudly.
#
# Exit codes of its own checks: 2 weights missing/unreadable, 3 GPU required
# but not visible, 4 a state folder is not writable, 1 bad settings.
#
# Every path comes from the environment so the script can be exercised
# outside a container (tests/test_deploy.py does that).
set -euo pipefail

: "${YOLOV5FACE_WEIGHTS:=/weights/yolov5n-0.5.pt}"
: "${YOLOV5FACE_MODEL_STORE:=/var/lib/yolov5face/model-store}"
: "${YOLOV5FACE_ENGINE_CACHE:=/var/lib/yolov5face/engines}"
: "${YOLOV5FACE_CONFIG:=}" # empty: the config packaged with yolov5face
: "${YOLOV5FACE_REQUIRE_GPU:=0}"
: "${YOLOV5FACE_NVIDIA_SMI:=nvidia-smi}"
: "${YOLOV5FACE_PYTHON:=python3}"
: "${LOG_LOCATION:=/var/log/yolov5face}"
export YOLOV5FACE_WEIGHTS YOLOV5FACE_MODEL_STORE YOLOV5FACE_ENGINE_CACHE LOG_LOCATION

log() {
    printf '[entrypoint] %s\n' "$*" >&2
}

# fail EXIT_CODE LINE...: print each LINE to stderr and exit.
fail() {
    local code=$1
    shift
    printf '[entrypoint] ERROR: %s\n' "$@" >&2
    exit "$code"
}

# 1. Pass-through for explicit commands.
if [[ $# -gt 0 && $1 != -* ]]; then
    exec "$@"
fi

# 2. Weights.
check_weights() {
    if [[ ! -e $YOLOV5FACE_WEIGHTS ]]; then
        fail 2 \
            "weights file not found: YOLOV5FACE_WEIGHTS=${YOLOV5FACE_WEIGHTS}" \
            "Weights are not part of the image. Download and verify them with weights/fetch.sh" \
            "(see weights/README.md), then mount them read-only, e.g." \
            "  docker run -v \$PWD/weights:/weights:ro ...   (compose: ../weights:/weights:ro)" \
            "or point YOLOV5FACE_WEIGHTS at the checkpoint."
    fi
    if [[ ! -f $YOLOV5FACE_WEIGHTS || ! -r $YOLOV5FACE_WEIGHTS || ! -s $YOLOV5FACE_WEIGHTS ]]; then
        fail 2 \
            "weights file is not a readable, non-empty file: YOLOV5FACE_WEIGHTS=${YOLOV5FACE_WEIGHTS}" \
            "(check the volume mount and its permissions; see weights/README.md)"
    fi
}

# 3. GPU visibility.
gpu_help="Run the container with GPU access (docker run --gpus all, or the compose"
gpu_help+=" deploy.resources.reservations.devices entry) on a host with the NVIDIA driver"
gpu_help+=" and nvidia-container-toolkit installed; on Kubernetes request nvidia.com/gpu."
gpu_help+=" To run without a GPU use the CPU image or set YOLOV5FACE_REQUIRE_GPU=0."

check_gpu() {
    local out
    if command -v "$YOLOV5FACE_NVIDIA_SMI" >/dev/null 2>&1; then
        if ! out=$("$YOLOV5FACE_NVIDIA_SMI" -L 2>&1); then
            fail 3 "YOLOV5FACE_REQUIRE_GPU=1 but '${YOLOV5FACE_NVIDIA_SMI} -L' failed: no usable GPU is visible in this container." \
                "nvidia-smi said: ${out}" "$gpu_help"
        fi
        if ! grep -q '^GPU [0-9]' <<<"$out"; then
            fail 3 "YOLOV5FACE_REQUIRE_GPU=1 but '${YOLOV5FACE_NVIDIA_SMI} -L' lists no GPU." \
                "nvidia-smi said: ${out}" "$gpu_help"
        fi
        log "GPU(s) visible:"
        printf '%s\n' "$out" >&2
        return 0
    fi
    # No nvidia-smi (e.g. NVIDIA_DRIVER_CAPABILITIES without "utility"): ask
    # the CUDA driver library directly.
    if out=$("$YOLOV5FACE_PYTHON" - 2>&1 <<'PY'
import ctypes
import sys

try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    sys.exit(f"libcuda.so.1 cannot be loaded ({exc})")
if cuda.cuInit(0) != 0:
    sys.exit("cuInit failed")
count = ctypes.c_int(0)
if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
    sys.exit("the CUDA driver reports no device")
print(f"{count.value} CUDA device(s)")
PY
    ); then
        log "GPU check (CUDA driver): ${out}"
        return 0
    fi
    fail 3 "YOLOV5FACE_REQUIRE_GPU=1 but no GPU is visible in this container:" \
        "'${YOLOV5FACE_NVIDIA_SMI}' is not installed and the CUDA driver check failed: ${out}" \
        "$gpu_help"
}

# 4. Writable state folders (volumes).
ensure_writable_dir() {
    local name=$1 dir=$2
    if ! mkdir -p -- "$dir" 2>/dev/null || [[ ! -w $dir ]]; then
        fail 4 "${name}=${dir} is not a writable directory for user $(id -u):$(id -g)." \
            "Fix the ownership of the volume mounted there (the images run as uid 10001)."
    fi
}

check_weights
case "$YOLOV5FACE_REQUIRE_GPU" in
    1 | true | yes) check_gpu ;;
    0 | false | no | "") ;;
    *) fail 1 "YOLOV5FACE_REQUIRE_GPU must be 0 or 1, got '${YOLOV5FACE_REQUIRE_GPU}'" ;;
esac
config_args=()
if [[ -n $YOLOV5FACE_CONFIG ]]; then
    if [[ ! -f $YOLOV5FACE_CONFIG ]]; then
        fail 1 "TorchServe config not found: YOLOV5FACE_CONFIG=${YOLOV5FACE_CONFIG}" \
            "(unset it to use the config packaged with yolov5face)"
    fi
    config_args=(--config "$YOLOV5FACE_CONFIG")
fi
ensure_writable_dir YOLOV5FACE_MODEL_STORE "$YOLOV5FACE_MODEL_STORE"
ensure_writable_dir YOLOV5FACE_ENGINE_CACHE "$YOLOV5FACE_ENGINE_CACHE"
ensure_writable_dir LOG_LOCATION "$LOG_LOCATION"

log "weights=${YOLOV5FACE_WEIGHTS} model_store=${YOLOV5FACE_MODEL_STORE}" \
    "engine_cache=${YOLOV5FACE_ENGINE_CACHE} backend=${YOLOV5FACE_BACKEND:-auto}" \
    "workers=${YOLOV5FACE_WORKERS:-default} batch_size=${YOLOV5FACE_BATCH_SIZE:-default}" \
    "max_batch_delay_ms=${YOLOV5FACE_MAX_BATCH_DELAY:-default} logs=${LOG_LOCATION}" \
    "config=${YOLOV5FACE_CONFIG:-packaged}"

# 5. Hand over to the server; exec keeps signals going straight to it. -v: the archive's
# build or reuse ("... is up to date") and TorchServe's start are logged.
exec yolov5face -v serve \
    "${config_args[@]}" \
    --model-store "$YOLOV5FACE_MODEL_STORE" \
    --weights "$YOLOV5FACE_WEIGHTS" \
    "$@"
