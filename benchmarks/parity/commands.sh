#!/usr/bin/env bash
# Small runs of every task, used to show that a refactor keeps results.json figures
# bit-identical on CPU (same thread count). Usage: benchmarks/parity/commands.sh OUT_DIR
# Needs the reference data in ../shared/data (or $SST_DATA_DIR).
set -euo pipefail
OUT=${1:?output folder}
DATA=${SST_DATA_DIR:-../shared/data}
SST=${SST:-.venv/bin/sst}
COMMON="--threads 1 --no_progress"
$SST compare lm --methods full,lora,relora,galore,sst --model gpt_micro --corpus tinyshakespeare \
  --data-dir "$DATA" --num_training_steps 12 --warmup_steps 2 --eval_every 6 --eval_tokens 2048 \
  --batch_size 4 --block_size 32 --rank 4 --iteration_interval 5 --lr 3e-3 \
  --output_dir "$OUT/lm" $COMMON > /dev/null
$SST compare mt --methods full,lora,relora,sst --data-dir "$DATA" --train_pairs 400 --eval_pairs 30 \
  --d_model 32 --num_layers 1 --num_heads 2 --vocab_size 300 --max_tokens 512 --rank 4 \
  --num_training_steps 8 --warmup_steps 2 --eval_every 4 --beam_size 2 --iteration_interval 3 \
  --output_dir "$OUT/mt" $COMMON > /dev/null
$SST compare graph --dataset disease --task lp --methods full,lora,relora,galore,sst --seeds 1,2 \
  --data-dir "$DATA" --epochs 15 --min_epochs 5 --patience 5 --rank 2 --iteration_interval 4 \
  --output_dir "$OUT/graph" $COMMON > /dev/null
$SST compare images --dataset digits --methods full,lora,relora,galore,sst --seeds 0,1 \
  --hidden 64,64 --rank 8 --epochs 1 --batch_size 32 --eval_every 20 --iteration_interval 10 \
  --output_dir "$OUT/images" $COMMON > /dev/null
$SST ablate images --variants sst,sst-uniform,full --set dataset=digits --set hidden=[32] \
  --set rank=4 --set epochs=1 --set batch_size=32 --set eval_every=20 \
  --output_dir "$OUT/ablate_images" $COMMON > /dev/null
echo "parity runs written to $OUT"
