#!/usr/bin/env bash
# Set up, then run the main job: new garments of every class from the shipped Fashion-MNIST model,
# written to out/garments (grid.png: one column per class, and one PNG per garment).
# Extra arguments go to `undiffuse sample` (e.g. --seed 7 --sampler heun --steps 30 --guidance 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/undiffuse sample fashion-mnist --n 100 --steps 20 --out out/garments "$@"
