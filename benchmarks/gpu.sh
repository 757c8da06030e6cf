#!/usr/bin/env bash
# The prepared GPU measurement of every method (README, "Benchmarks"): one process, full-size
# architectures with random weights (no download), bf16, 512²/768²/1024², the official-procedure
# and Marigold 50x10 baselines side by side. About 5 minutes on one H100/H200, construction
# included; each measurement is capped and nothing new starts after 330 s, and the table
# benchmarks/gpu-<device>.md is rewritten after every measurement, so even the hard stop
# below leaves a (partial) table. Extra arguments go to `diffdepth bench gpu`.
# Check it on any CPU first:  benchmarks/gpu.sh --dry-run --out /tmp/gpu-dry.md
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # works from a plain checkout too
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec timeout --signal=INT --kill-after=20 450 python -m diffdepth.cli bench gpu "$@"
