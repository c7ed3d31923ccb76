#!/usr/bin/env bash
# Issue 5's GPU checks in one call on a lent H100: training/evaluation speed against the conventional pipeline,
# the tuning ablation, a 50-epoch training of part_2_cifar.py, and sweep throughput with 1/2/4/8 workers.
#
# Before the call, on the development machine (needs the package index; the wheels are not committed):
#     bash benchmarks/gpu_check.sh fetch        # fills benchmarks/wheels/ with wandb and optuna for Python 3.12
# The call (the device tool's `run`; benchmarks/wheels is git-ignored, so it must be carried):
#     run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels"], timeout_s=600)
# One phase again, if a phase ran out of time or failed:  bash benchmarks/gpu_check.sh sweep
# Phases: setup data throughput train ablation sweep compile (default: all, in that order: the most wanted
# figures first, torch.compile's minutes of compiling last). Each has its own time limit (seconds below), so the
# whole call stays inside ~9.5 minutes (570 s of limits; with the machine's start, ~12 of the 15 device minutes);
# a phase cut short still leaves its lines in the log. Results, logs and a summary land in $OUT
# (benchmarks/results/gpu-check when $OUT is unset); the last lines printed are the summary tables.
# Rehearse the mechanics on a CPU first (tiny sizes, figures meaningless):
#     GPU_CHECK_SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/gc-out bash benchmarks/gpu_check.sh
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WHEELS="$HERE/wheels"
PY="${PYTHON:-python3}"
OUT="${OUT:-$HERE/results/gpu-check}"
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check}"
DATA="$WORK/data"
LOG="$OUT/gpu_check.log"
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true MPLBACKEND=Agg

if [ "${1:-}" = "fetch" ]; then
    # Full dependency closure for the device's Python 3.12 (pip then installs only what the device lacks); numpy
    # is dropped because the device image has it and the carried tree is limited to 64 MiB.
    mkdir -p "$WHEELS"
    "$PY" -m pip download wandb==0.31.0 optuna==5.0.0 --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" -q || exit 1
    rm -f "$WHEELS"/numpy-*.whl
    du -sh "$WHEELS"
    exit 0
fi

mkdir -p "$OUT" "$WORK"
PHASES="${*:-setup data throughput train ablation sweep compile}"
if [ -n "${GPU_CHECK_SMOKE:-}" ]; then  # a CPU rehearsal of this script's mechanics: tiny sizes, figures meaningless
    DATA_ARGS="--train-per-class 6 --test-per-class 2"
    BENCH_ARGS="--mode smoke --device cpu --batch-size 64"
    ABLATION_ARGS="--variants nchw --no-float-check"
    COMPILE_ARGS="--variants compile --no-float-check"
    TRAIN_ARGS="--epochs 1 --val-size 100 --batch_size=64 --device cpu"
    SWEEP_ARGS="--workers 1 --trials-per-worker 1 --epochs 1 --val-size 100 --batch-size 64 --device cpu"
else
    DATA_ARGS="--train-per-class 500 --test-per-class 100"
    BENCH_ARGS="--mode gpu"
    ABLATION_ARGS="--variants fp16,fp32,nchw,sgd-for-loop,sgd-fused,sync-per-step,cuda-graph --no-float-check"
    COMPILE_ARGS="--variants compile,compile-ro"
    TRAIN_ARGS="--epochs 50"
    SWEEP_ARGS="--workers 1,2,4,8 --trials-per-worker 2 --epochs 2"
fi
declare -A SECONDS_FOR=([setup]=45 [data]=30 [throughput]=120 [train]=75 [ablation]=90 [sweep]=120 [compile]=90)

phase() {  # phase NAME COMMAND...: run with its time limit, log everything, record the exit status
    local name=$1 started=$SECONDS
    shift
    echo "=== $name (limit ${SECONDS_FOR[$name]} s) ===" | tee -a "$LOG"
    timeout "${SECONDS_FOR[$name]}" bash -c '"$@"' _ "$@" 2>&1 | tee -a "$LOG"  # bash -c: functions too
    local code=${PIPESTATUS[0]}
    echo "$name: exit $code after $((SECONDS - started)) s" | tee -a "$OUT/phases.txt" "$LOG"
}

setup() {
    if [ -d "$WHEELS" ]; then
        "$PY" -m pip install -q --no-index --find-links "$WHEELS" wandb==0.31.0 optuna==5.0.0 || return 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$PY" - <<'EOF'
import torch, torchvision, wandb, optuna
print(f"torch {torch.__version__} torchvision {torchvision.__version__} wandb {wandb.__version__} "
      f"optuna {optuna.__version__} cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible")
props = torch.cuda.get_device_properties(0)
print(f"{props.name}: {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
}

data() {  # the real CIFAR-100 sizes, synthetic pixels: 50,000 train / 10,000 test images
    [ -f "$DATA/cifar-100-python/train" ] || "$PY" synthetic_cifar100.py "$DATA" $DATA_ARGS
}

train50() {  # the whole program for 50 epochs, as a user runs it; summary.json holds train()'s own seconds
    local t0=$SECONDS
    "$PY" part_2_cifar.py --data-dir "$DATA" $TRAIN_ARGS --wandb-mode disabled --no-log-model \
        --runs-dir "$WORK/runs" || return 1
    echo "part_2_cifar.py $TRAIN_ARGS: whole process $((SECONDS - t0)) s wall"
    cp "$(ls -td "$WORK"/runs/*/ | head -1)summary.json" "$OUT/train50_summary.json"
    "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"train(): {s['total_seconds']:.1f} s for \
{s['epochs_completed']} epochs, median {s['train_images_per_second']:,.0f} img/s, device {s['device']}\")" \
        "$OUT/train50_summary.json"
}

export PY WHEELS DATA OUT WORK DATA_ARGS TRAIN_ARGS
export -f setup data train50
for name in $PHASES; do
    case $name in
        setup) phase setup setup ;;
        data) phase data data ;;
        throughput) phase throughput "$PY" -m benchmarks.train_throughput $BENCH_ARGS --data-dir "$DATA" \
            --run-epochs 0 --json "$OUT/train_throughput.json" ;;
        ablation) phase ablation "$PY" -m benchmarks.train_throughput $BENCH_ARGS --only-ablation $ABLATION_ARGS \
            --data-dir "$DATA" --json "$OUT/ablation.json" ;;
        compile) phase compile "$PY" -m benchmarks.train_throughput $BENCH_ARGS --only-ablation $COMPILE_ARGS \
            --data-dir "$DATA" --json "$OUT/compile.json" ;;
        train) phase train train50 ;;
        sweep) phase sweep "$PY" -m benchmarks.sweep_throughput $SWEEP_ARGS --data-dir "$DATA" \
            --json "$OUT/sweep_throughput.json" ;;
        *) echo "unknown phase $name: use setup data throughput train ablation sweep compile, or fetch"; exit 2 ;;
    esac
done

echo "=== summary ==="
cat "$OUT/phases.txt"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for name in ("train_throughput.json", "ablation.json", "compile.json", "sweep_throughput.json"):
    path = Path(sys.argv[1]) / name
    if path.is_file():
        result = json.loads(path.read_text())
        print(result.get("table") or f"{name}: partial (stopped early): {sorted(result)}")
        print()
EOF
