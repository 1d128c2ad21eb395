#!/usr/bin/env bash
# The whole device check, run ON a GPU machine of the `device` tool, from the repository root, after
# `bash benches/gpu_wheels.sh` here (which builds the extension and fetches polars as a wheel):
#
#   device run, carry [".whl", "python/opt_neurons/_core.abi3.so"], timeout_s 580:  STEPS=main bash benches/gpu_check.sh
#   then (a second call, ~3 minutes):                                                 STEPS=examples bash benches/gpu_check.sh
#
# `main` takes about 7-8 minutes on an H200 plus ~30 s to start the machine; `examples` is the on / off pair
# of issue 18 (examples=0 vs 16 at OPT-like densities). STEPS defaults to both (too long for one call). Every step has its own time limit and writes its output under $OUT,
# so a step cut short still returns what the others measured. Then copy the new runs of
# $OUT/gpu.json into benches/results/gpu.json and write them up in benches/RESULTS.md section 5.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/polars*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/python HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
STEPS=${STEPS:-main,examples}
if [[ ",$STEPS," == *",main,"* ]]; then
# CUDA packing equals numpy's; analyze() on CUDA equals the CPU (device sums, blocks, interleaving).
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_capture.py 2>&1 | tail -3 | tee "$OUT/tests.log"
# The core on this host (16 cores).
timeout 60 .whl/core-bench --bench --warm-up-time 1 --measurement-time 2 \
    'core/(update/3072/5%/uniform/16384rows|update_layers)' 2>&1 | grep -E '^core|time:|thrpt:' | tee "$OUT/core.log"
# Throughput with and without the analysis: a uniform 5% fc1 density, then densities shaped like
# trained OPT's (mean ~2%).
timeout 240 python3 benches/bench_gpu.py --shapes 125m,6.7b,1.3b --seqs 64 2>&1 | tee "$OUT/gpu.log"
timeout 200 python3 benches/bench_gpu.py --shapes 125m,6.7b,1.3b --seqs 64 --density paper 2>&1 | tee "$OUT/gpu_paper.log"
fi
if [[ ",$STEPS," == *",examples,"* ]]; then
# Examples on and off (issue 18: at most +3% at OPT-like densities), same shapes and tokens.
timeout 120 python3 benches/bench_gpu.py --shapes 125m,1.3b --seqs 32 --density paper --examples 0 2>&1 | tee "$OUT/gpu_examples_off.log"
timeout 120 python3 benches/bench_gpu.py --shapes 125m,1.3b --seqs 32 --density paper --examples 16 2>&1 | tee "$OUT/gpu_examples_on.log"
fi
cp benches/results/gpu.json "$OUT/"
