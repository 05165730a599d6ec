#!/usr/bin/env bash
# One command for the day a CUDA GPU is at hand (about 5-8 minutes on one modern GPU):
#   1. the CUDA tests (pytest -k cuda: tests marked `cuda` or named for it);
#   2. inference benchmarks at 2048² and 8192²: exact fp32, bf16 and fp16 engines, and the reference approach
#      on the same GPU (bench/sliding.py --device cuda);
#   3. a training step, fp32 and AMP (bench/train_step.py --device cuda);
#   4. a one-GPU torchrun smoke of training/train.py (a few iterations on generated data);
# then one table of everything. Without a CUDA GPU it says so and exits 0.
#
#   bash bench/gpu_check.sh                 # on the GPU machine, from anywhere
#   bash bench/gpu_check.sh --cpu-plumbing  # the same steps, tiny and on the CPU: checks the wiring, not speed
# Environment: PY (python, default .venv/bin/python), OUT (folder for logs and JSON, default a temp dir).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="${OUT:-$(mktemp -d -t factseg-gpu-check-XXXXXX)}"
mkdir -p "$OUT"
MODE="cuda"
if [ "${1:-}" = "--cpu-plumbing" ]; then MODE="cpu"; fi

if [ "$MODE" = "cuda" ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to torch ($PY): nothing to measure here (use --cpu-plumbing to test the wiring)."
    exit 0
fi

if [ "$MODE" = "cuda" ]; then
    DEVICE=cuda; SIZES=2048,8192; BACKBONE=resnet50; STEPS=5; ITERS=20; TEST_TIMEOUT=300; TRAIN_SIZE=896
    PATHS=reference,torch,torch-bf16,torch-fp16
    "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"# GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")'
else
    DEVICE=cpu; SIZES=1024; BACKBONE=resnet18; STEPS=1; ITERS=2; TEST_TIMEOUT=300; TRAIN_SIZE=256
    PATHS=reference,torch
    echo "# CPU plumbing run: tiny sizes, ResNet-18; figures say nothing about a GPU"
fi
echo "# logs and JSON in $OUT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
STATUS=()   # one "name|status|seconds|figures" line per step

step() {  # step NAME LOGFILE COMMAND...: run, time, remember the outcome
    local name="$1" log="$2"; shift 2
    local t0=$SECONDS
    echo "==> $name: $*"
    if "$@" >"$log" 2>&1; then
        STATUS+=("$name|ok|$((SECONDS - t0))|$(summary "$name" "$log")")
    else
        STATUS+=("$name|FAILED (rc $?)|$((SECONDS - t0))|see $log")
        tail -n 15 "$log"
    fi
}

summary() {  # a one-line figure for the table from a step's log/JSON
    case "$1" in
        cuda-tests) tail -n 1 "$2" ;;
        torchrun-smoke) grep -Eo 'iter [0-9]+/[0-9]+ loss [0-9.]+' "$2" | tail -n 1 ;;
        *) echo "" ;;
    esac
}

# 1. CUDA tests (on the CPU run: the same selection, which then skips)
step cuda-tests "$OUT/tests.log" timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests -k cuda

# 2. inference: every precision and the reference approach on the same device
step inference "$OUT/sliding.log" timeout 300 "$PY" bench/sliding.py --device "$DEVICE" --sizes "$SIZES" \
    --paths "$PATHS" --backbone "$BACKBONE" --batch-size 8 --fast-stride 0 --memory-size 0 --json "$OUT/sliding.json"

# 3. a training step, fp32 and AMP
step train-step "$OUT/train_step.log" timeout 180 "$PY" bench/train_step.py --device "$DEVICE" --modes fp32,amp \
    --backbone "$BACKBONE" --size "$TRAIN_SIZE" --steps "$STEPS" --json "$OUT/train_step.json"

# 4. one-GPU torchrun smoke of the real training script on generated data
step synthetic-data "$OUT/synthetic.log" "$PY" -m training.synthetic --out "$OUT/data" --train 2 --val 1 --size 128 \
    --seed 3 --no-scene
step torchrun-smoke "$OUT/torchrun.log" timeout 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    training/train.py --config training/configs/demo.yaml --data-root "$OUT/data" --work-dir "$OUT/run" \
    --max-iters "$ITERS"

echo
echo "==================== gpu_check ($MODE) ===================="
printf '%-16s %-14s %8s  %s\n' step status seconds figures
for line in "${STATUS[@]}"; do
    IFS='|' read -r name status seconds figures <<<"$line"
    printf '%-16s %-14s %8s  %s\n' "$name" "$status" "$seconds" "$figures"
done
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
sliding = out / "sliding.json"
if sliding.is_file():
    print(f"\n{'size':>6} {'path':<11} {'MP/s':>8} {'× ref':>6} {'× fp32':>7} {'agreement':>10} {'peak RSS GiB':>12}")
    for r in json.loads(sliding.read_text())["results"]:
        ratio = lambda v: f"{v:6.2f}" if v else "     -"  # noqa: E731
        print(f"{r['size']:>6} {r['path']:<11} {r['mp_per_s']:>8.3f} {ratio(r['ratio_to_reference'])} "
              f"{ratio(r['ratio_to_torch']):>7} {100 * r['agreement']:>9.3f}% {r['peak_rss'] / 2**30:>12.2f}")
train = out / "train_step.json"
if train.is_file():
    print("\ntraining step:")
    data = json.loads(train.read_text())
    for r in data if isinstance(data, list) else data.get("results", []):
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
EOF
for line in "${STATUS[@]}"; do
    case "$line" in *"|FAILED"*) exit 1 ;; esac
done
exit 0
