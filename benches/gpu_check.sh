#!/usr/bin/env bash
# The whole device check, run ON a GPU machine of the `device` tool, from the repository root, after
# `bash benches/gpu_wheels.sh` here (which builds the extension and fetches polars as a wheel):
#
#   device run, carry [".whl", "python/opt_neurons/_core.abi3.so"], timeout_s 580:  bash benches/gpu_check.sh
#
# About 8-9 minutes on an H200 (the families step ~1 minute of it; ONLY=families for that step alone) plus ~30 s to start the machine: a session's 15 minutes of device time
# leave room for one more call. ONLY=examples runs just issue 18's examples on / off pair (~3 minutes: a
# second call, as it does not fit in the first); ONLY=device runs issue 22's device counting and peers (~8 minutes). Every step has its own time limit and writes its output under $OUT,
# so a step cut short still returns what the others measured. Then copy the new runs of
# $OUT/gpu.json into benches/results/gpu.json and write them up in benches/RESULTS.md section 5.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/polars*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/python HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
if [ "${ONLY:-}" = examples ]; then
    # Examples on and off (issue 18: at most +3% at OPT-like densities), same shapes and tokens.
    timeout 120 python3 benches/bench_gpu.py --shapes 125m,1.3b --seqs 32 --density paper --examples 0 2>&1 | tee "$OUT/gpu_examples_off.log"
    timeout 120 python3 benches/bench_gpu.py --shapes 125m,1.3b --seqs 32 --density paper --examples 16 2>&1 | tee "$OUT/gpu_examples_on.log"
    cp benches/results/gpu.json "$OUT/"
    exit 0
fi
if [ "${ONLY:-}" = device ]; then
    # Issue 22: counting on the device against the host, every statistic on every token, then the paper's
    # densities; and the census with plain torch hooks counting on the device (nnsight and TransformerLens
    # cannot be installed there: no network) beside analyze() with device counting.
    timeout 150 python3 benches/bench_gpu.py --shapes 125m,1.3b,6.7b --seqs 32 --counting device 2>&1 | tee "$OUT/gpu_device.log"
    timeout 150 python3 benches/bench_gpu.py --shapes 125m,1.3b,6.7b --seqs 32 --counting device --density paper 2>&1 | tee "$OUT/gpu_device_paper.log"
    timeout 200 python3 benches/bench_peers.py --seqs 32 --batch-size 8 --rounds 2 --tools bare,opt_neurons,hooks --counting device 2>&1 | tee "$OUT/peers.log"
    cp benches/results/gpu.json benches/results/peers.json "$OUT/"
    exit 0
fi
# Other families (issue 17): GPT-2-small, Pythia-410m and Llama-1B shapes at their firing rule's density
# (~50% on random weights), analyze() vs the bare forward. About a minute; `ONLY=families` runs just this.
timeout 150 python3 benches/bench_families.py --seqs 16 2>&1 | tee "$OUT/families.log"
cp benches/results/families_gpu.json "$OUT/" 2>/dev/null
[ "${ONLY:-}" = families ] && exit 0
# CUDA packing equals numpy's; analyze() on CUDA equals the CPU (device sums, blocks, interleaving).
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_capture.py 2>&1 | tail -3 | tee "$OUT/tests.log"
# The core on this host (16 cores).
timeout 60 .whl/core-bench --bench --warm-up-time 1 --measurement-time 2 \
    'core/(update/3072/5%/uniform/16384rows|update_layers)' 2>&1 | grep -E '^core|time:|thrpt:' | tee "$OUT/core.log"
# Throughput with and without the analysis: a uniform 5% fc1 density, then densities shaped like
# trained OPT's (mean ~2%).
timeout 240 python3 benches/bench_gpu.py --shapes 125m,6.7b,1.3b --seqs 64 2>&1 | tee "$OUT/gpu.log"
timeout 200 python3 benches/bench_gpu.py --shapes 125m,6.7b,1.3b --seqs 64 --density paper 2>&1 | tee "$OUT/gpu_paper.log"
cp benches/results/gpu.json "$OUT/"
