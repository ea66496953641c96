#!/usr/bin/env bash
# The GPU checks of the project, in one call (under 8 minutes on one H100/H200):
#   1. the tests marked `cuda` (the only tests that skip without a GPU), must all pass;
#   2. benchmarks/perf_gpu.py: every method at LLaMA-130M and 350M shapes in bf16-mixed,
#      65,536 tokens per step: tokens/s, SST/full step time, peak CUDA memory per method;
#   3. benchmarks/torchrun_one_device.py: `torchrun --nproc_per_node 1` of a short SST job
#      against the plain command (and the plain command against itself: the noise floor).
#
#   benchmarks/gpu_check.sh                        # on a GPU: results -> benchmarks/results/perf_gpu/
#   benchmarks/gpu_check.sh --device cpu           # dry run on a CPU: -> runs/gpu_check_dry_run/
#   benchmarks/gpu_check.sh --out DIR              # results elsewhere
#
# Runs from a source checkout without installing (PYTHONPATH=src), with $PYTHON, else
# .venv/bin/python, else python3: a GPU machine's own torch is used as it is. The log of
# everything goes to <out>/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="${2:?--device needs a value: cuda, cuda:N or cpu}"; shift 2 ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'; allowed: --device cuda|cuda:N|cpu, --out DIR" >&2
       exit 2 ;;
  esac
done
case "$device" in
  cuda|cuda:[0-9]*) dry=(); out="${out:-benchmarks/results/perf_gpu}" ;;
  cpu) dry=(--dry_run); out="${out:-runs/gpu_check_dry_run}" ;;
  *) echo "gpu_check.sh: --device '$device' is unknown; allowed: cuda, cuda:N, cpu" >&2; exit 2 ;;
esac

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
log="$out/gpu_check.log"
start=$(date +%s)

{
  echo "== gpu_check.sh --device $device ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, '| cuda available:',
torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  if [ "$device" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  fi

  # Each part runs even when the one before failed; the script's status says if any did.
  echo "== 1. tests marked cuda"
  # -rs lists skips: on a GPU none may skip; on the CPU dry run they all do.
  tests=0
  "$PYTHON" -m pytest -q -m cuda -rs -p no:cacheprovider --continue-on-collection-errors tests \
    || tests=$?

  echo "== 2. every method at LLaMA-130M and 350M shapes, bf16-mixed"
  perf=0
  "$PYTHON" benchmarks/perf_gpu.py --device "$device" --out "$out" "${dry[@]}" || perf=$?

  echo "== 3. torchrun --nproc_per_node 1 against the plain command"
  one=0
  "$PYTHON" benchmarks/torchrun_one_device.py --device "$device" --out "$out" || one=$?

  echo "== done in $(( $(date +%s) - start )) s; results in $out; status: tests $tests," \
       "perf $perf, torchrun-1 $one"
  [ "$tests" = 0 ] && [ "$perf" = 0 ] && [ "$one" = 0 ]
} 2>&1 | tee "$log"
