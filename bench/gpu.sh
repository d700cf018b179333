#!/usr/bin/env bash
# The GPU check: one prepared script, under 8 minutes on one NVIDIA GPU, that writes bench/RESULTS-gpu.md.
#
#   bench/gpu.sh            (from anywhere; PYTHON=... to use another interpreter than .venv/bin/python)
#
# 1. Exactness (bench/gpu_check.py): the demo model, bf16, deterministic algorithms (train.full_determinism,
#    CUBLAS_WORKSPACE_CONFIG): an uninterrupted run vs stopped + resumed, with synchronous and with asynchronous
#    saves (pinned host copies); per-step losses equal and final weights bitwise equal.
# 2. bench/run.py on the GPU for the GPT-2 124M shape: bf16 matmul peak; tokens/s and MFU of gptresume train,
#    plain Trainer and the minimal loop; checkpoint pause, synchronous vs async_save.
# 3. bench/gpu_report.py: bench/RESULTS-gpu.md (and bench/results-gpu.json) from both.
#
# Each stage has its own time limit (SIGINT at the limit: bench/run.py still writes what it measured), so the whole
# script ends within 8 minutes. Without a GPU it exits 2 at once and runs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi missing or finds none). This check needs one; nothing was run." >&2
  exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: nvidia-smi sees a GPU but torch.cuda.is_available() is False ($("$PY" -c 'import torch; print(torch.__version__)')): install a CUDA build of torch. Nothing was run." >&2
  exit 2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=${WORK:-$(mktemp -d -t gptresume-gpu-XXXX)}
mkdir -p "$WORK"
start=$(date +%s)
echo "bench/gpu.sh: work dir $WORK; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"

timeout -s INT 200 "$PY" bench/gpu_check.py --work "$WORK/exact" --out "$WORK/exact.json" --steps 60
exact=$?
echo "bench/gpu.sh: exactness exit $exact after $(( $(date +%s) - start )) s"

timeout -s INT 260 "$PY" bench/run.py --only peak throughput checkpoint --workloads gpt2 --reps 1 --no-compile \
  --work "$WORK/bench" --out "$WORK/bench-out" \
  --plan matmul_n=8192 gpt2_batch=16 gpt2_warmup=5 gpt2_steps=20 ckpt_gpt2_batch=16 ckpt_gpt2_every=4 ckpt_gpt2_saves=2
bench=$?
echo "bench/gpu.sh: bench exit $bench after $(( $(date +%s) - start )) s"

"$PY" bench/gpu_report.py --exact "$WORK/exact.json" --bench "$WORK/bench-out" --exact-exit "$exact" \
  --bench-exit "$bench" --seconds "$(( $(date +%s) - start ))" --out bench/RESULTS-gpu.md
report=$?
echo "bench/gpu.sh: wrote bench/RESULTS-gpu.md in $(( $(date +%s) - start )) s (logs in $WORK)"
[ "$exact" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$report" -eq 0 ]
