#!/usr/bin/env bash
# Set up, then run the main job: train a 2-D diffusion model for a minute, sample, write out/demo/demo.png.
# Extra arguments go to `undiffuse demo` (e.g. --data swiss_roll --sampler heun).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/undiffuse demo --out out/demo "$@"
