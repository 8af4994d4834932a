#!/usr/bin/env bash
# Equal wall time, two U-Net layouts at ~equal parameters on Fashion-MNIST (configs/fashion-mnist.toml):
# the shipped 3-level 32·(1,2,3) (2.75 M) against a ddp-style 4-level 8·(2,4,8,13) (2.85 M, attention at 4×4,
# dropout 0). Each trains for SECONDS (SIGTERM ends it with a checkpoint), then `undiffuse evaluate` scores
# 500 samples (UniPC, 20 steps, guidance 2) with the classifier's features. Results: bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-420}
OUT=${OUT:-runs/layout-quality}
C=(--set train.steps=5000 --set train.sample_every=0 --set train.checkpoint_every=100000 --no-progress)
FOUR=(--set model.channels=8 --set "model.channel_mult=[2,4,8,13]" --set "model.attention_resolutions=[4]"
      --set model.dropout=0.0)
timeout -s TERM "$SECONDS_EACH" .venv/bin/undiffuse train configs/fashion-mnist.toml --set "out_dir='$OUT/3level'" "${C[@]}" || true
timeout -s TERM "$SECONDS_EACH" .venv/bin/undiffuse train configs/fashion-mnist.toml --set "out_dir='$OUT/4level'" "${C[@]}" "${FOUR[@]}" || true
for r in 3level 4level; do
  .venv/bin/undiffuse evaluate "$OUT/$r" --samplers unipc --steps 20 --n 500 --features classifier --out "$OUT/eval-$r" --no-progress
done
