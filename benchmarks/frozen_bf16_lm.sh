#!/usr/bin/env bash
# Validation loss of SST with fp32 (default) vs bf16 frozen factors: gpt_cpu on
# TinyShakespeare (char), the settings of examples/lm_compare_cpu.toml's SST run, seeds 0 and 1.
#   nice bash benchmarks/frozen_bf16_lm.sh [DATA_DIR] [RUNS_DIR]
# Writes runs under RUNS_DIR (default runs/frozen_bf16) and the table to
# benchmarks/results/frozen_bf16/lm_val_loss.{json,md}.
set -euo pipefail
DATA=${1:-../shared/data}
RUNS=${2:-runs/frozen_bf16}
PY=${PYTHON:-python}
for seed in 0 1; do
  for variant in fp32 bf16; do
    extra=()
    [ "$variant" = bf16 ] && extra=(--frozen_dtype bfloat16)
    $PY -m sparse_spectral.cli train lm --method sst --rank 16 --model gpt_cpu --lr 1e-2 \
      --num_training_steps 600 --warmup_steps 60 --batch_size 12 --block_size 64 \
      --iteration_interval 100 --eval_every 100 --eval_tokens 16384 --corpus tinyshakespeare \
      --data-dir "$DATA" --seed "$seed" --threads 1 --overwrite "${extra[@]}" \
      --output_dir "$RUNS/${variant}_seed$seed" > "$RUNS.${variant}_seed$seed.log" 2>&1
  done
done
$PY benchmarks/frozen_bf16.py --collect "$RUNS" --out benchmarks/results/frozen_bf16
