#!/usr/bin/env bash
# GPU check: jaxtl's benchmark at the reference size (ResNet-18, CIFAR stem, batch 256, 32x32x3,
# fp32) next to a PyTorch eager peer when torch is importable; about 5 minutes. The benchmark
# measures the study's seeds checks (5 seeds as the engine runs them vs 5 one-seed
# steps, the step in its loop vs alone, 8 vmapped seeds vs one) and the NNX step first, then the
# ResNet-18 strategy rows.
#
#   scripts/gpu_check.sh [OUT_DIR]             # on a machine with jax[cuda] (and optionally torch)
#
# Environment: PYTHON (default python3), BENCH_ARGS (default "--size gpu"), PEER_ARGS (extra
# torch_peer.py flags), BENCH_TIMEOUT (seconds, default 300). The benchmark rewrites
# OUT_DIR/bench.json after every measurement, so a run cut short keeps what it measured
# ("complete": false). A CPU smoke run of the same Python parts, tiny:
#   BENCH_ARGS="--model mlp --model-option widths=16, --batch-size 8 --steps 2 --loop-steps 2" \
#   PEER_ARGS="--batch-size 4 --image-size 8 --base-width 4 --steps 2" scripts/gpu_check.sh /tmp/gc
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${1:-/tmp/jaxtl_gpu_check}
BENCH_ARGS=${BENCH_ARGS:---size gpu}
PEER_ARGS=${PEER_ARGS:-}
# The seeds checks and the NNX step add about a minute of compiling to the ResNet-18 rows.
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
mkdir -p "$OUT"
# A rerun reuses compiled programs: compile time is most of the budget for ResNet-18.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/xla_cache}

"$PYTHON" - <<'PY'
import jax
print("jax", jax.__version__, "devices:", jax.devices())
if jax.default_backend() != "gpu":
    print("warning: no GPU backend; timings below are for", jax.default_backend())
PY
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

peer=()
if "$PYTHON" -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086  # PEER_ARGS is a list of flags
  if timeout 90 "$PYTHON" scripts/torch_peer.py $PEER_ARGS --json "$OUT/torch.json"; then
    peer=(--peer "$OUT/torch.json")
  else
    echo "the PyTorch peer failed or ran past 90 s: going on without it"
  fi
else
  echo "torch is not importable: skipping the PyTorch peer"
fi

status=0
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
timeout "$BENCH_TIMEOUT" "$PYTHON" scripts/bench_freeze.py $BENCH_ARGS ${peer[@]+"${peer[@]}"} \
  --json "$OUT/bench.json" || status=$?
if [ "$status" -eq 124 ]; then
  echo "the benchmark ran past ${BENCH_TIMEOUT} s: $OUT/bench.json holds what it measured"
fi
echo "results: $OUT/bench.json${peer[*]:+ and $OUT/torch.json}"
exit "$status"
